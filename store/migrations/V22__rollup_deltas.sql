-- A note in rollup_dirty may carry what its transaction added to one 15-minute bucket of its
-- hour: the rollup columns of the readings it stored there, and nothing else. The refresh then
-- adds that to the bucket's row instead of reading the hour's raw readings again, so its cost
-- follows the readings that arrived, not the readings the hour already holds. Deltas are noted for
-- the hour a batch arrived in and the hour before. A note without a quarter (an older hour, a
-- quality flag changed, readings written through staging, or notes from before this migration)
-- still has its whole hour recomputed from the raw readings.
ALTER TABLE rollup_dirty
    ADD COLUMN quarter     timestamptz,
    ADD COLUMN n           bigint,
    ADD COLUMN total       double precision,
    ADD COLUMN lo          double precision,
    ADD COLUMN hi          double precision,
    ADD COLUMN first_ts    timestamptz,
    ADD COLUMN first_value double precision,
    ADD COLUMN last_ts     timestamptz,
    ADD COLUMN last_value  double precision,
    ADD COLUMN flagged     bigint,
    ADD COLUMN quality     smallint,
    ADD CONSTRAINT rollup_dirty_delta_check
        CHECK ((quarter IS NULL) = (n IS NULL) AND (quarter IS NULL) = (flagged IS NULL));
