-- The same table with its status check written as comparisons instead of an IN list.
--
-- SQLite codes `status IN ('active', 'expired', 'released', 'pending', 'failed')` in a CHECK
-- as a lookup in a temporary B-tree of the five strings, and builds that B-tree again for
-- every row written (a constraint's code runs once per row, and a list of more than two
-- constants always takes the B-tree): every lease insert and every status change paid for it.
-- A chain of `=` tests is the same constraint at a few comparisons per row (measured in
-- "The status check" in BENCHMARKS.md).
--
-- A CHECK cannot be changed in place, so the table is rebuilt as SQLite's documentation says
-- for other schema changes: copy the rows into a new table, drop the old one, rename the new
-- one, and create the indexes again. `seq` keeps its values (it is the queue's order), and the
-- AUTOINCREMENT counter keeps the old one's high-water mark, so a `seq` is never handed out
-- twice even if the newest rows had been deleted.
CREATE TABLE leases_rebuilt (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT    NOT NULL UNIQUE,
    file_path      TEXT    NOT NULL,
    agent_id       TEXT    NOT NULL,
    mode           TEXT    NOT NULL CHECK (mode IN ('exclusive', 'shared')),
    status         TEXT    NOT NULL CHECK (status = 'active' OR status = 'pending'
                                           OR status = 'expired' OR status = 'released'
                                           OR status = 'failed'),
    fencing_token  INTEGER,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    ttl_ms         INTEGER NOT NULL,
    renewal_count  INTEGER NOT NULL DEFAULT 0,
    max_renewals   INTEGER,
    updated_at     INTEGER NOT NULL,
    reason         TEXT
);
INSERT INTO leases_rebuilt (seq, id, file_path, agent_id, mode, status, fencing_token,
        created_at, expires_at, ttl_ms, renewal_count, max_renewals, updated_at, reason)
    SELECT seq, id, file_path, agent_id, mode, status, fencing_token, created_at, expires_at,
        ttl_ms, renewal_count, max_renewals, updated_at, reason
    FROM leases ORDER BY seq;
DELETE FROM sqlite_sequence WHERE name = 'leases_rebuilt';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'leases_rebuilt', max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'leases'), 0),
                                 coalesce((SELECT max(seq) FROM leases), 0));
DROP TABLE leases;
ALTER TABLE leases_rebuilt RENAME TO leases;
CREATE INDEX leases_by_path ON leases (file_path);
CREATE INDEX leases_by_agent ON leases (agent_id, expires_at);
CREATE INDEX leases_live_by_expiry ON leases (expires_at) WHERE status IN ('active', 'pending');
CREATE INDEX leases_live_by_path ON leases (file_path, expires_at) WHERE status IN ('active', 'pending');
