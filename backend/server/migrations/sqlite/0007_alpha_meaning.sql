-- One-time data migrations done in Rust after the SQL ones (`studio/relabel.rs`), each recorded by name once done.
-- `alpha_meaning` (2026-12-06): a UniKE variant's fixed `alpha=X` now names the in-context knowledge's share (the
-- paper's meaning); stored method names written when it weighted the input become `alpha=1−X`.
CREATE TABLE data_migrations (
    name       TEXT PRIMARY KEY,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);
