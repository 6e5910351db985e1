-- The address a user signed up (or a demo guest was created) from: demo mode caps guests per address and hour on it,
-- since sessions can be ended at will.
ALTER TABLE users ADD COLUMN created_ip TEXT;
-- A cancel asked of a running run: the worker stops it after its current case, and a restart before then does not
-- resume it.
ALTER TABLE benchmark_runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
