-- 0001_core: tenants, people and their access, spaces, threads, messages, files, search.
--
-- Runs on SQLite and PostgreSQL alike (dialect sections: see app/migrate.py).
-- * ids are BIGINT from app.ids.new_id (time-ordered, so ORDER BY id is creation order);
--   *_at are BIGINT unix milliseconds; flags are INTEGER 0/1; JSON is TEXT.
-- * Every table but tenants has tenant_id, and every index a tenant-scoped query needs starts
--   with it. Global UNIQUE token_hash columns are the exception: a hash is looked up alone.
-- * References inside a tenant are composite, (tenant_id, x_id) -> x (tenant_id, id), so no row
--   can point into another tenant; UNIQUE (tenant_id, id) on the referenced tables allows it.
-- * Deleting a tenant deletes all its rows (ON DELETE CASCADE from tenants); rows owned by a
--   space, thread or message go with it. Users are deactivated (active = 0), not deleted.

CREATE TABLE tenants (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,                 -- the subdomain label
    display_name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    settings TEXT NOT NULL DEFAULT '{}'        -- JSON object: password policy, allow-list...
);

CREATE TABLE users (
    id BIGINT PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email TEXT NOT NULL,
    display_name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'guest')),
    password_hash TEXT,                        -- argon2; NULL until a password is set
    active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, id)
);
-- lower() folds ASCII only on SQLite: store e-mail addresses lower-cased as well.
CREATE UNIQUE INDEX users_tenant_email ON users (tenant_id, lower(email));

CREATE TABLE invitations (
    id BIGINT PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    email TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'guest')),
    created_by BIGINT,                         -- NULL: made by the operator
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    FOREIGN KEY (tenant_id, created_by) REFERENCES users (tenant_id, id)
);
CREATE INDEX invitations_tenant_email ON invitations (tenant_id, lower(email));

CREATE TABLE sessions (
    id BIGINT PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    user_agent TEXT NOT NULL DEFAULT '',
    ip TEXT NOT NULL DEFAULT '',
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX sessions_tenant_user ON sessions (tenant_id, user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);  -- clean-up, across tenants

CREATE TABLE api_tokens (
    id BIGINT PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL DEFAULT '',           -- space-separated scope names
    created_at BIGINT NOT NULL,
    expires_at BIGINT,                         -- NULL: until revoked
    revoked_at BIGINT,
    last_used_at BIGINT,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX api_tokens_tenant_user ON api_tokens (tenant_id, user_id);

CREATE TABLE spaces (
    id BIGINT PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    private INTEGER NOT NULL DEFAULT 0 CHECK (private IN (0, 1)),
    created_by BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    archived INTEGER NOT NULL DEFAULT 0 CHECK (archived IN (0, 1)),
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, created_by) REFERENCES users (tenant_id, id)
);

CREATE TABLE space_members (
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    space_id BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    role TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member')),
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, space_id, user_id),
    FOREIGN KEY (tenant_id, space_id) REFERENCES spaces (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX space_members_tenant_user ON space_members (tenant_id, user_id, space_id);

CREATE TABLE threads (
    id BIGINT PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    space_id BIGINT NOT NULL,
    title TEXT NOT NULL,
    created_by BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    last_message_at BIGINT NOT NULL,           -- created_at until the first message
    UNIQUE (tenant_id, id),
    UNIQUE (tenant_id, space_id, id),          -- lets messages prove their space_id
    FOREIGN KEY (tenant_id, space_id) REFERENCES spaces (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, created_by) REFERENCES users (tenant_id, id)
);
CREATE INDEX threads_tenant_space_activity ON threads (tenant_id, space_id, last_message_at);

CREATE TABLE messages (
    id BIGINT PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    thread_id BIGINT NOT NULL,
    space_id BIGINT NOT NULL,                  -- the thread's, kept here for scoping
    author_id BIGINT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    edited_at BIGINT,
    deleted_at BIGINT,                         -- soft delete: search and lists skip it
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, space_id, thread_id)
        REFERENCES threads (tenant_id, space_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, author_id) REFERENCES users (tenant_id, id)
);
CREATE INDEX messages_tenant_thread ON messages (tenant_id, thread_id, id);
CREATE INDEX messages_tenant_space ON messages (tenant_id, space_id, id);

CREATE TABLE message_edits (
    id BIGINT PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    message_id BIGINT NOT NULL,
    body TEXT NOT NULL,                        -- the body before this edit
    edited_at BIGINT NOT NULL,
    edited_by BIGINT NOT NULL,
    FOREIGN KEY (tenant_id, message_id) REFERENCES messages (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, edited_by) REFERENCES users (tenant_id, id)
);
CREATE INDEX message_edits_tenant_message ON message_edits (tenant_id, message_id, id);

CREATE TABLE mentions (
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    message_id BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    read_at BIGINT,
    PRIMARY KEY (tenant_id, message_id, user_id),
    FOREIGN KEY (tenant_id, message_id) REFERENCES messages (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX mentions_tenant_user ON mentions (tenant_id, user_id, message_id);

-- Unread counts: messages of the thread with id > last_read_message_id (ids are time-ordered).
CREATE TABLE reads (
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL,
    thread_id BIGINT NOT NULL,
    last_read_message_id BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, user_id, thread_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, thread_id) REFERENCES threads (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX reads_tenant_thread ON reads (tenant_id, thread_id);

CREATE TABLE files (
    id BIGINT PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    space_id BIGINT NOT NULL,
    message_id BIGINT,                         -- NULL until attached to a message
    uploader_id BIGINT NOT NULL,
    stored_name TEXT NOT NULL,                 -- name on disk under the slot's data directory
    original_name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL CHECK (size >= 0),
    sha256 TEXT NOT NULL,                      -- hex
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, stored_name),
    FOREIGN KEY (tenant_id, space_id) REFERENCES spaces (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, message_id) REFERENCES messages (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, uploader_id) REFERENCES users (tenant_id, id)
);
CREATE INDEX files_tenant_space ON files (tenant_id, space_id, id);
CREATE INDEX files_tenant_message ON files (tenant_id, message_id);

-- Full-text search over message bodies (query: app.db.search_sql). Both sides split words
-- the same way, fold case and keep diacritics, with no stemming: 'simple' and unicode61.
-- sqlite:
-- An external-content FTS5 index: rowid = messages.id, kept in step by triggers.
CREATE VIRTUAL TABLE messages_fts USING fts5(
    body,
    content = 'messages',
    content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 0'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.id, old.body);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.id, old.body);
    INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body);
END;
-- postgres:
-- An expression index rather than a generated column, so that rows of messages have the same
-- columns on both backends; queries must use exactly this expression to use it.
CREATE INDEX messages_search ON messages USING GIN (to_tsvector('simple', body));
-- both:
