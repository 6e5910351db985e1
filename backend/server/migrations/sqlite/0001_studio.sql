-- UniKE Studio: accounts, team workspaces, edits, benchmark runs, audit log.
PRAGMA foreign_keys = ON;

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT,                      -- NULL for demo guests
    guest         INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

CREATE TABLE sessions (
    token_hash TEXT    PRIMARY KEY,          -- sha256 of the cookie's token
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf       TEXT    NOT NULL,
    ip         TEXT,
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    expires_at TEXT    NOT NULL
);

CREATE TABLE workspaces (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    sandbox    INTEGER NOT NULL DEFAULT 0,   -- a demo guest's own workspace
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

CREATE TABLE memberships (
    workspace_id INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role         TEXT    NOT NULL CHECK (role IN ('owner', 'editor', 'viewer')),
    PRIMARY KEY (workspace_id, user_id)
);

CREATE TABLE edit_cases (
    id             INTEGER PRIMARY KEY,
    workspace_id   INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    question       TEXT    NOT NULL,
    target         TEXT    NOT NULL,
    pred           TEXT,
    image          TEXT,
    rephrase       TEXT,
    image_rephrase TEXT,
    loc            TEXT,
    loc_ans        TEXT,
    m_loc          TEXT,
    m_loc_q        TEXT,
    m_loc_a        TEXT,
    source         TEXT    NOT NULL,         -- 'playground' or 'import'
    created_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

CREATE TABLE applied_edits (
    id           INTEGER PRIMARY KEY,
    workspace_id INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    case_id      INTEGER REFERENCES edit_cases(id) ON DELETE SET NULL,
    author_id    INTEGER NOT NULL REFERENCES users(id),
    method       TEXT    NOT NULL,
    seed         INTEGER NOT NULL,
    patch_dir    TEXT    NOT NULL,           -- the patch (safetensors + JSON), relative to the data directory
    result_json  TEXT    NOT NULL,           -- the AppliedEdit shown to clients
    active       INTEGER NOT NULL DEFAULT 1, -- 0 once undone
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    undone_at    TEXT
);
CREATE INDEX applied_edits_stack ON applied_edits (workspace_id, active, id);

CREATE TABLE benchmark_runs (
    id           INTEGER PRIMARY KEY,
    workspace_id INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    author_id    INTEGER NOT NULL REFERENCES users(id),
    model        TEXT    NOT NULL,
    request_json TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('queued', 'running', 'finished', 'failed', 'cancelled')),
    done         INTEGER NOT NULL DEFAULT 0,
    total        INTEGER NOT NULL DEFAULT 0,
    error        TEXT,
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    finished_at  TEXT
);

-- One row per finished method of a run (kept when the run later fails or is cancelled).
CREATE TABLE run_results (
    run_id      INTEGER NOT NULL REFERENCES benchmark_runs(id) ON DELETE CASCADE,
    method      TEXT    NOT NULL,
    result_json TEXT    NOT NULL,
    score       REAL    NOT NULL,
    PRIMARY KEY (run_id, method)
);

-- Per-case scores of a finished method (token convention, percent; NULL where the case has no such probe).
CREATE TABLE run_cases (
    run_id       INTEGER NOT NULL REFERENCES benchmark_runs(id) ON DELETE CASCADE,
    method       TEXT    NOT NULL,
    case_index   INTEGER NOT NULL,
    edit_ms      REAL    NOT NULL,
    reliability  REAL,
    t_generality REAL,
    m_generality REAL,
    t_locality   REAL,
    m_locality   REAL,
    portability  REAL,
    PRIMARY KEY (run_id, method, case_index)
);

CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY,
    workspace_id INTEGER REFERENCES workspaces(id) ON DELETE CASCADE,
    actor_id     INTEGER REFERENCES users(id),
    action       TEXT    NOT NULL,
    detail       TEXT    NOT NULL,
    at           TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);
CREATE INDEX audit_by_workspace ON audit_log (workspace_id, id);
