-- API tokens of `leasehold serve`. Only a SHA-256 hash of each token is kept: the token itself
-- is shown once, when it is created. Times are milliseconds since the Unix epoch.
CREATE TABLE api_tokens (
    id            TEXT    PRIMARY KEY,                        -- short public id, to list and revoke
    agent_id      TEXT    NOT NULL,                           -- the agent every request acts as
    is_admin      INTEGER NOT NULL CHECK (is_admin IN (0, 1)),
    token_hash    TEXT    NOT NULL UNIQUE,                    -- hex SHA-256 of the token
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER,                                    -- set once; a revoked token is refused
    last_used_at  INTEGER                                     -- updated at most once a minute
);
CREATE INDEX api_tokens_by_agent ON api_tokens (agent_id);
