-- Reference runs: the project's own committed `unike reproduce` results (results/DIR/manifest.json), imported when
-- the studio first starts so that a fresh leaderboard is not empty. `reference` says where such a run comes from
-- (`commit 1a2b3c4, results/DIR/table1.json`); it is NULL for runs launched in the studio.
-- `cases_json`: the texts of the cases a run edits (question, target, probes), recorded at launch, so that the run's
-- page can list them after its data snapshot is gone.
ALTER TABLE benchmark_runs ADD COLUMN reference TEXT;
ALTER TABLE benchmark_runs ADD COLUMN cases_json TEXT;
