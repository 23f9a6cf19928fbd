-- 0002_security: what the tenant's security settings need (they live in tenants.settings, JSON):
-- password age and history, lockout state, a second factor with recovery codes, the audit log.
-- Same conventions as 0001_core (BIGINT ids and unix-ms *_at, INTEGER flags, tenant-scoped).

ALTER TABLE users ADD COLUMN password_changed_at BIGINT;    -- NULL: never set (or before 0002)
ALTER TABLE users ADD COLUMN must_change_password INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN failed_sign_ins INTEGER NOT NULL DEFAULT 0;  -- since the last success
ALTER TABLE users ADD COLUMN locked_until BIGINT;           -- NULL: not locked
ALTER TABLE users ADD COLUMN locked_by_admin INTEGER NOT NULL DEFAULT 0; -- locked until unlocked

-- Earlier password hashes of a user, newest first by created_at, for "no reuse of the last N".
CREATE TABLE password_history (
    id BIGINT PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX password_history_user ON password_history (tenant_id, user_id, created_at);

-- A user's TOTP second factor: pending until confirmed with a first code (enabled_at set).
CREATE TABLE totp_factors (
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL,
    secret TEXT NOT NULL,                      -- base32
    created_at BIGINT NOT NULL,
    enabled_at BIGINT,
    last_step BIGINT NOT NULL DEFAULT 0,       -- newest accepted time step: no code twice
    PRIMARY KEY (tenant_id, user_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE recovery_codes (
    id BIGINT PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL,
    code_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    used_at BIGINT,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX recovery_codes_user ON recovery_codes (tenant_id, user_id);

-- Who did what, from where, to what, with which result. No foreign key to users: the record
-- outlives what it names, and failed sign-ins name no user.
CREATE TABLE audit_log (
    id BIGINT PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    ip TEXT NOT NULL DEFAULT '',
    user_id BIGINT,                            -- the acting user; NULL: none signed in
    actor TEXT NOT NULL DEFAULT '',            -- e-mail as given (a failed sign-in's too)
    action TEXT NOT NULL,                      -- e.g. sign_in, password_change, file_download
    target TEXT NOT NULL DEFAULT '',           -- what it acted on, e.g. "user 123"
    result TEXT NOT NULL,                      -- ok, or why not (wrong_password, locked, ...)
    detail TEXT NOT NULL DEFAULT '{}'          -- JSON object
);
CREATE INDEX audit_log_tenant_at ON audit_log (tenant_id, at);
CREATE INDEX audit_log_tenant_action ON audit_log (tenant_id, action, at);
CREATE INDEX audit_log_tenant_user ON audit_log (tenant_id, user_id, at);
