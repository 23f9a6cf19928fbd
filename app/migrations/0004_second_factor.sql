-- 0004_second_factor: sign-ins whose password was right and that wait for a second factor.
-- Same conventions as 0001_core (BIGINT ids and unix-ms *_at, tenant-scoped, token hashes only).
-- The browser holds only the random token; which user it stands for is known here alone.

CREATE TABLE pending_sign_ins (
    id BIGINT PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    tries INTEGER NOT NULL DEFAULT 0,          -- codes tried with this token
    used_at BIGINT,                            -- the sign-in finished: the token works once
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX pending_sign_ins_expiry ON pending_sign_ins (tenant_id, expires_at);

-- Wrong second-factor codes in a row, for the lockout. Kept apart from users.failed_sign_ins,
-- which a right password resets: someone who knows the password must not get endless tries.
ALTER TABLE totp_factors ADD COLUMN failed_codes INTEGER NOT NULL DEFAULT 0;
