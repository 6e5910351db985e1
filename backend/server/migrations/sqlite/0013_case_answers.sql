-- A run's per-case answers to the edit question: the model's top-1 tokens at the target's positions (teacher-forced,
-- as reliability is scored) before and after the edit, as text; NULL for rows stored before they were recorded.
ALTER TABLE run_cases ADD COLUMN answer_before TEXT;
ALTER TABLE run_cases ADD COLUMN answer_after TEXT;
