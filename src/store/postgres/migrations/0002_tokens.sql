-- API tokens of `leasehold serve`: only a SHA-256 hash of each token is kept.
CREATE TABLE api_tokens (
    id            TEXT    PRIMARY KEY,
    agent_id      TEXT    NOT NULL,
    is_admin      BOOLEAN NOT NULL,
    token_hash    TEXT    NOT NULL UNIQUE,
    created_at    BIGINT  NOT NULL,
    revoked_at    BIGINT,
    last_used_at  BIGINT
);
CREATE INDEX api_tokens_by_agent ON api_tokens (agent_id);
