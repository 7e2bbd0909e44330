-- Forecasts: values at valid times for one sensor, issued at a time by a named source (a met or
-- ocean service, a hydrological model, or Tidemark's own nowcast).
--
-- forecast_sources names who may issue them. A source publishes over MQTT as the broker user of
-- its name, or posts over the API with a producer key bound to it. `nowcast` is Tidemark's own.
CREATE TABLE forecast_sources (
    name        text PRIMARY KEY,
    -- Tidemark's own nowcast: its warnings are Possible, not Likely.
    builtin     boolean NOT NULL DEFAULT false,
    label       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO forecast_sources (name, builtin, label) VALUES ('nowcast', true, 'Tidemark nowcast');

-- One row per issue: what the latest issue of a sensor is, cheaply, and whether a redelivered
-- issue is the same one (its fingerprint) or a conflicting one.
CREATE TABLE forecast_issues (
    sensor_id    integer NOT NULL,
    source       text NOT NULL REFERENCES forecast_sources (name),
    issued_at    timestamptz NOT NULL,
    value_count  integer NOT NULL,
    fingerprint  bigint NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sensor_id, source, issued_at)
);
CREATE INDEX forecast_issues_latest ON forecast_issues (sensor_id, issued_at DESC);

-- The values, in the sensor's canonical unit; quantiles as {"0.9": value}. A hypertable on
-- issued_at with TimescaleDB; a plain table otherwise. Retention deletes whole issues.
DO $$
BEGIN
    CREATE TABLE forecasts (
        sensor_id  integer NOT NULL,
        source     text NOT NULL,
        issued_at  timestamptz NOT NULL,
        valid_at   timestamptz NOT NULL,
        value      double precision NOT NULL,
        quantiles  jsonb,
        PRIMARY KEY (sensor_id, source, issued_at, valid_at)
    );
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM create_hypertable('forecasts', 'issued_at', chunk_time_interval => interval '7 days');
    END IF;
END
$$;

-- A producer key posts forecasts for exactly one source.
ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_role_check;
ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_check;
ALTER TABLE api_keys ADD COLUMN source text REFERENCES forecast_sources (name);
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('researcher', 'utility', 'municipality', 'operator', 'producer'));
ALTER TABLE api_keys ADD CONSTRAINT api_keys_check
    CHECK ((role = 'municipality') = (municipality IS NOT NULL));
ALTER TABLE api_keys ADD CONSTRAINT api_keys_source_check
    CHECK ((role = 'producer') = (source IS NOT NULL));

-- How far ahead an area looks at forecasts (see the README for why a day by default).
ALTER TABLE flood_areas ADD COLUMN forecast_horizon interval NOT NULL DEFAULT interval '24 hours';
