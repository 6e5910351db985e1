-- Shards of benchmark runs that worker processes compute (`unike serve --workers external`, `unike worker`): a
-- method's cases in ranges of whole chunks. A worker claims a queued shard, or a running one whose lease ran out (its
-- worker died), and renews the lease while it works; the result of the method is assembled once every shard of it is
-- done. `outcome_json` holds a done shard's metric updates (unike_core::eval::shard::ShardOutcome).
CREATE TABLE run_shards (
    id           INTEGER PRIMARY KEY,
    run_id       INTEGER NOT NULL REFERENCES benchmark_runs(id) ON DELETE CASCADE,
    method       TEXT    NOT NULL,
    first_case   INTEGER NOT NULL,
    end_case     INTEGER NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    worker       TEXT,
    lease_until  TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    outcome_json TEXT,
    error        TEXT,
    claim_ms     REAL,                       -- the claim's round trip to the database
    wall_ms      REAL,                       -- claimed to stored: setup, pre-edit outputs, edits, scoring
    edit_ms      REAL,                       -- of which the edits
    UNIQUE (run_id, method, first_case)
);
CREATE INDEX run_shards_claim ON run_shards (status, id);
-- Who computes a run: 'local' (the server's own run thread) or 'workers' (shards in run_shards).
ALTER TABLE benchmark_runs ADD COLUMN executor TEXT NOT NULL DEFAULT 'local';
