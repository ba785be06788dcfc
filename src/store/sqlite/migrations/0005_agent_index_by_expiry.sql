-- One index by agent instead of two (see "Fewer pages per write" in BENCHMARKS.md). Keyed by
-- expiry, it finds an agent's live rows with a range (`expires_at > now`), and it holds no
-- column that a release, an expiry or a failed wait changes: the store writes those with an
-- UPDATE that leaves `expires_at` out, so they write nothing here. The partial index of live
-- rows (migration 4) had an entry to delete at every end of a lease: in cleanup, a page
-- written per expired lease when many agents hold leases.
--
-- Cost: an agent's live-lease lookups also pass over its leases that ended before their
-- expiry came (released early), until that expiry passes: what the agent held within one TTL,
-- never what the database holds.
DROP INDEX IF EXISTS leases_live_by_agent;
DROP INDEX IF EXISTS leases_by_agent;
CREATE INDEX leases_by_agent ON leases (agent_id, expires_at);
