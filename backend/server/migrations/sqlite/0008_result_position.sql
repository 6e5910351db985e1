-- The order of a run's methods as a column (SQL has no portable row order: PostgreSQL has no rowid): results are
-- listed in the order the run asked for its methods.
ALTER TABLE run_results ADD COLUMN position INTEGER NOT NULL DEFAULT 0;
UPDATE run_results SET position = rowid;
