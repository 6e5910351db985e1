-- Bytes of images a run's data snapshot holds (runs on workspace cases; 0 otherwise): a workspace's unfinished runs
-- together may hold at most the snapshot quota (`--snapshot-mb`).
ALTER TABLE benchmark_runs ADD COLUMN snapshot_bytes INTEGER NOT NULL DEFAULT 0;
