-- The hourly rollup once more, packed: one row per sensor and UTC day holding that day's hourly
-- rows in one bytea, so that a year in hourly buckets is 365 short rows instead of 8,760. PostgreSQL
-- sends a bytea as it is; arrays would be sent element by element, which costs more than the 8,760
-- rows did.
--
-- `hours` is one 52-byte entry per hourly row, oldest first, each field as PostgreSQL's binary send
-- functions write it (big-endian): the hour of the day (int2, 0 to 23), n (int4), flagged (int4),
-- quality (int2), then total, lo, hi, first_value and last_value (float8 each, NaN where the hourly
-- row has NULL: an hour of flagged readings only). The first and last timestamps are left out: they
-- only matter when hours are combined into wider buckets, which this relation never serves.
--
-- A plain table in both storage modes, kept by Tidemark's refresh from readings_1h for the days
-- the dirty list names, in the refresh that brings readings_1h up to date. A day with a dirty
-- note is read the way it was before (from the raw readings), so a packed row is only ever used
-- where it is exact. Rows are at most about 1.3 kB: PLAIN storage keeps them in the heap,
-- uncompressed, so reading one never decompresses or follows a TOAST pointer.
CREATE TABLE readings_1h_days (
    sensor_id  integer NOT NULL,
    day        timestamptz NOT NULL,
    hours      bytea NOT NULL,
    PRIMARY KEY (sensor_id, day)
);
ALTER TABLE readings_1h_days ALTER COLUMN hours SET STORAGE PLAIN;

-- Hourly rows computed before this migration: every day of them is packed now. (With
-- TimescaleDB on a fresh database readings_1h does not exist yet; it is made after the
-- migrations, empty.) The same packing as the refresh's (store/src/rollup.rs).
DO $$
BEGIN
    IF to_regclass('readings_1h') IS NOT NULL THEN
        INSERT INTO readings_1h_days
        SELECT x.sensor_id, date_bin('1 day', x.bucket, 'epoch'::timestamptz),
               string_agg(
                   int2send((date_part('epoch', x.bucket - date_bin('1 day', x.bucket, 'epoch'::timestamptz)) / 3600)::smallint)
                   || int4send(x.n::integer) || int4send(x.flagged::integer)
                   || int2send(coalesce(x.quality, 0::smallint))
                   || float8send(coalesce(x.total, 'NaN')) || float8send(coalesce(x.lo, 'NaN'))
                   || float8send(coalesce(x.hi, 'NaN')) || float8send(coalesce(x.first_value, 'NaN'))
                   || float8send(coalesce(x.last_value, 'NaN')),
                   ''::bytea ORDER BY x.bucket)
        FROM readings_1h x
        GROUP BY 1, 2;
    END IF;
END
$$;
