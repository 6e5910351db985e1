-- What a run wants its reader to know (cases of the workspace left out of a run on its own cases).
ALTER TABLE benchmark_runs ADD COLUMN note TEXT;
