-- Rollups of readings in 15-minute, hourly and daily buckets, aligned to the Unix epoch (so days
-- are UTC days). Each row summarises one sensor's bucket: the usable readings (no quality flag
-- set but the device's own suspicion) in n, total, lo, hi, first and last, and how many flagged
-- readings were left out. The relations readings_15m, readings_1h and readings_1d have the same
-- names and columns in both storage modes.
--
-- With TimescaleDB they are continuous aggregates, created after the migrations (see schema.rs),
-- because their definition uses the extension's functions. Without it they are the tables below,
-- which Tidemark fills itself.
--
-- rollup_dirty lists the (sensor, hour) pairs whose readings changed after their rollup rows were
-- last computed. Every write of readings or of quality flags adds its pairs in the same
-- transaction; a refresh recomputes the pairs (and the days they are in) and removes them. Queries
-- read those hours (or days, from the daily rollup) from the raw readings, so an aggregate is exact
-- whether or not the refresh has run yet.
CREATE TABLE rollup_dirty (
    id         bigint GENERATED ALWAYS AS IDENTITY,
    sensor_id  integer NOT NULL,
    hour       timestamptz NOT NULL,
    noted_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rollup_dirty_sensor_hour ON rollup_dirty (sensor_id, hour);
CREATE INDEX rollup_dirty_id ON rollup_dirty (id);
-- A queue: rows come and go all the time, so it is vacuumed by row count, not by growth.
ALTER TABLE rollup_dirty SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000);

-- The primary keys cover every column: one sensor's series is read from the index in order,
-- however its rows are spread over the heap (a row per sensor per hour, written as time passes,
-- puts a sensor's neighbouring buckets on different pages).
DO $$
DECLARE
    name text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        FOREACH name IN ARRAY ARRAY['readings_15m', 'readings_1h', 'readings_1d'] LOOP
            EXECUTE format(
                'CREATE TABLE %I (
                    sensor_id    integer NOT NULL,
                    bucket       timestamptz NOT NULL,
                    n            bigint NOT NULL,
                    total        double precision,
                    lo           double precision,
                    hi           double precision,
                    first_ts     timestamptz,
                    first_value  double precision,
                    last_ts      timestamptz,
                    last_value   double precision,
                    flagged      bigint NOT NULL,
                    quality      smallint,
                    PRIMARY KEY (sensor_id, bucket) INCLUDE (n, total, lo, hi, first_ts,
                        first_value, last_ts, last_value, flagged, quality)
                )', name);
        END LOOP;
    END IF;
END
$$;

-- Readings stored before this migration have no rollup rows yet: every hour of them is dirty.
INSERT INTO rollup_dirty (sensor_id, hour)
SELECT DISTINCT sensor_id, date_bin('1 hour', ts, 'epoch'::timestamptz) FROM readings;
