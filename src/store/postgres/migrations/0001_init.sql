-- Leases, waiters and their history, as in the SQLite store. Times are milliseconds since the
-- Unix epoch (taken from the database server's clock). Keys compare byte-wise (COLLATE "C") so
-- that the folder range [folder, folder-without-slash + '0') holds exactly the keys below it.
CREATE TABLE leases (
    seq            BIGSERIAL PRIMARY KEY,               -- insertion order = queue order
    id             UUID    NOT NULL UNIQUE,
    file_path      TEXT    COLLATE "C" NOT NULL,
    agent_id       TEXT    NOT NULL,
    mode           TEXT    NOT NULL CHECK (mode IN ('exclusive', 'shared')),
    status         TEXT    NOT NULL CHECK (status IN ('active', 'expired', 'released', 'pending', 'failed')),
    fencing_token  BIGINT,
    created_at     BIGINT  NOT NULL,
    expires_at     BIGINT  NOT NULL,
    ttl_ms         BIGINT  NOT NULL,
    renewal_count  BIGINT  NOT NULL DEFAULT 0,
    max_renewals   BIGINT,
    updated_at     BIGINT  NOT NULL,
    reason         TEXT
);
CREATE INDEX leases_by_path ON leases (file_path);
CREATE INDEX leases_by_agent ON leases (agent_id, status);
CREATE INDEX leases_live_by_expiry ON leases (expires_at) WHERE status IN ('active', 'pending');
CREATE INDEX leases_live_by_path ON leases (file_path, expires_at) WHERE status IN ('active', 'pending');

CREATE TABLE lease_history (
    id             BIGSERIAL PRIMARY KEY,
    lease_id       UUID    NOT NULL,
    agent_id       TEXT    NOT NULL,
    file_path      TEXT    COLLATE "C" NOT NULL,
    event_type     TEXT    NOT NULL,
    status_before  TEXT,
    status_after   TEXT    NOT NULL,
    renewal_count  BIGINT  NOT NULL,
    fencing_token  BIGINT,
    event_at       BIGINT  NOT NULL,
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
    updated_at   BIGINT  NOT NULL
);

-- Fencing tokens: one sequence for the database, shared by every server.
CREATE SEQUENCE lease_fencing;
