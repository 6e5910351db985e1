-- Answers and edits for worker processes (`unike serve --workers external`): a replica stores the job and waits for
-- its result; a worker claims it (ahead of run shards: each worker looks for these every few milliseconds, on a
-- thread of its own) with a lease, computes it on the stack the job names, and stores the result. `payload_json`
-- and `result_json` are the server's own types (paths relative to the data folder).
CREATE TABLE interactive_jobs (
    id           INTEGER PRIMARY KEY,
    model        TEXT    NOT NULL,
    kind         TEXT    NOT NULL CHECK (kind IN ('answer', 'edit')),
    payload_json TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'abandoned')),
    worker       TEXT,
    lease_until  TEXT,
    result_json  TEXT,
    error_kind   TEXT,
    error        TEXT,
    created_at   TEXT    NOT NULL
);
CREATE INDEX interactive_jobs_claim ON interactive_jobs (status, id);
-- Worker processes as they last reported (every 5 s): a replica tells from it whether anyone computes for its model
-- (an answer with no live worker is a 503 at once, `GET /api/health` counts them).
CREATE TABLE workers (
    name      TEXT PRIMARY KEY,
    model     TEXT NOT NULL,
    kinds     TEXT NOT NULL,
    last_seen TEXT NOT NULL
);
