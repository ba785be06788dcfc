-- Leases, waiters and their history. Times are milliseconds since the Unix epoch.
CREATE TABLE leases (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order = queue order
    id             TEXT    NOT NULL UNIQUE,             -- random UUID
    file_path      TEXT    NOT NULL,                    -- normalised key; trailing '/' = folder
    agent_id       TEXT    NOT NULL,
    mode           TEXT    NOT NULL CHECK (mode IN ('exclusive', 'shared')),
    status         TEXT    NOT NULL CHECK (status IN ('active', 'expired', 'released', 'pending', 'failed')),
    fencing_token  INTEGER,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    ttl_ms         INTEGER NOT NULL,
    renewal_count  INTEGER NOT NULL DEFAULT 0,
    max_renewals   INTEGER,
    updated_at     INTEGER NOT NULL,
    reason         TEXT
);
CREATE INDEX leases_by_path ON leases (file_path);
CREATE INDEX leases_by_agent ON leases (agent_id, status);
CREATE INDEX leases_live_by_expiry ON leases (expires_at) WHERE status IN ('active', 'pending');
CREATE INDEX leases_live_by_path ON leases (file_path, expires_at) WHERE status IN ('active', 'pending');

CREATE TABLE lease_history (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    lease_id       TEXT    NOT NULL,
    agent_id       TEXT    NOT NULL,
    file_path      TEXT    NOT NULL,
    event_type     TEXT    NOT NULL,
    status_before  TEXT,
    status_after   TEXT    NOT NULL,
    renewal_count  INTEGER NOT NULL,
    fencing_token  INTEGER,
    event_at       INTEGER NOT NULL,
    reason         TEXT
);
CREATE INDEX lease_history_by_time ON lease_history (event_at);
CREATE INDEX lease_history_by_path ON lease_history (file_path, event_at);
CREATE INDEX lease_history_by_agent ON lease_history (agent_id, event_at);
CREATE INDEX lease_history_by_lease ON lease_history (lease_id);

CREATE TABLE lease_configs (
    key          TEXT    PRIMARY KEY,
    value        TEXT    NOT NULL,
    description  TEXT    NOT NULL,
    updated_at   INTEGER NOT NULL
);

-- One row: the last fencing token handed out. Tokens are global, so they grow for every path.
CREATE TABLE fencing (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    last_token  INTEGER NOT NULL
);
INSERT INTO fencing (id, last_token) VALUES (1, 0);
