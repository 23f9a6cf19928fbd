-- 0003_accounts: one-time password-reset links that an administrator makes for a user (24 h).
-- Same conventions as 0001_core (BIGINT ids and unix-ms *_at, tenant-scoped, token hashes only).

CREATE TABLE password_resets (
    id BIGINT PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_by BIGINT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,                            -- used, or replaced by a newer link
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX password_resets_user ON password_resets (tenant_id, user_id);
