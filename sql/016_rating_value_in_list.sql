-- 016: the rating_value domain checks its value against the ten half stars.
--
-- Why: the check of 002 (BETWEEN 0.5 AND 5.0 AND VALUE * 2 = trunc(VALUE *
-- 2)) does two numeric multiplications and a trunc per rating, about
-- 0.55 us of CPU per row: more than a third of what the heap insert of a
-- rating costs, on every row of an ingest (docs/BENCHMARKS.md "MLOps
-- loop").  numeric(2,1) has already rounded the value to one decimal
-- before the check runs, so "a half star from 0.5 to 5.0" is exactly these
-- ten values; the list is in the order of how often MovieLens uses them (a
-- list is searched in order, most ratings match on the first three), about
-- 0.2 us per row.  NULL still passes (columns say NOT NULL themselves),
-- NaN and everything else are rejected as before, under the same
-- constraint name.  Adding the constraint checks the stored ratings once.

ALTER DOMAIN rating_value DROP CONSTRAINT rating_value_check;
ALTER DOMAIN rating_value ADD CONSTRAINT rating_value_check
    CHECK (VALUE IN (4.0, 3.0, 5.0, 3.5, 4.5, 2.0, 2.5, 1.0, 1.5, 0.5));
