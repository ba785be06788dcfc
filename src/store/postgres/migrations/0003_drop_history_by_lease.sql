-- No query reads history by lease id (history is filtered by path, agent, time and id), yet
-- every event paid for this index: a random page written per event. See BENCHMARKS.md.
DROP INDEX IF EXISTS lease_history_by_lease;
