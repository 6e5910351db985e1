-- How a stored result's figures were computed (issue 14). 'v1': token accuracy over the answer and its
-- end-of-sequence token, locality as top-1 agreement at those positions (M-Locality too). 'v2' (EasyEdit's
-- multimodal evaluation): answer tokens only, T-Locality top-1 and M-Locality element-wise top-10 agreement at the
-- answer positions. Every row stored before this migration is v1.
ALTER TABLE run_results ADD COLUMN convention TEXT NOT NULL DEFAULT 'v1';
ALTER TABLE run_cases ADD COLUMN convention TEXT NOT NULL DEFAULT 'v1';
-- v2: M-Locality as top-1 agreement at the answer positions (NULL for v1 rows, whose m_locality was top-1).
ALTER TABLE run_cases ADD COLUMN m_locality_top1 REAL;
