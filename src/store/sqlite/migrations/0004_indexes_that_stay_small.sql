-- Indexes whose writes land on few pages (see "Fewer pages per write" in BENCHMARKS.md). A
-- random key costs a page written to the WAL for every row, however few rows a commit has.
--
-- An agent's leases in the order they were made. Neither column changes when a lease ends, so
-- releasing writes nothing here (the old index had the status in it, so every release moved
-- its entry).
DROP INDEX IF EXISTS leases_by_agent;
CREATE INDEX leases_by_agent ON leases (agent_id, seq);
-- An agent's live leases and queue entries: small, so that listing them costs what the agent
-- holds.
CREATE INDEX leases_live_by_agent ON leases (agent_id) WHERE status IN ('active', 'pending');
-- History filtered by path or agent is found through the leases' own indexes and this one
-- (every event's path and agent are its lease's). Lease ids are time-ordered (UUID version 7),
-- so new entries land at the end of this index rather than at random places in two others.
DROP INDEX IF EXISTS lease_history_by_path;
DROP INDEX IF EXISTS lease_history_by_agent;
CREATE INDEX lease_history_by_lease ON lease_history (lease_id);
