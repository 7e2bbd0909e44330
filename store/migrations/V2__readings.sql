-- readings: one row per sensor and timestamp. The relation has the same name and columns in both
-- storage modes; only its physical layout differs.
--
-- With TimescaleDB (the extension is created before migrations run, when configured and available):
-- a hypertable on ts with 7-day chunks. Compression and retention policies are applied afterwards from
-- the configuration, since their intervals are settings.
--
-- Without it: a table partitioned by range on ts; Tidemark creates monthly partitions ahead of need
-- and before writing a batch that reaches a month without one.
--
-- There is deliberately no foreign key to sensors: ingest only writes ids it has just looked up, and a
-- per-row key check would halve the COPY rate.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        CREATE TABLE readings (
            sensor_id    integer NOT NULL,
            ts           timestamptz NOT NULL,
            value        double precision NOT NULL,
            quality      smallint NOT NULL DEFAULT 0,
            received_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (sensor_id, ts)
        );
        PERFORM create_hypertable('readings', 'ts', chunk_time_interval => interval '7 days');
    ELSE
        CREATE TABLE readings (
            sensor_id    integer NOT NULL,
            ts           timestamptz NOT NULL,
            value        double precision NOT NULL,
            quality      smallint NOT NULL DEFAULT 0,
            received_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (sensor_id, ts)
        ) PARTITION BY RANGE (ts);
    END IF;
END
$$;
