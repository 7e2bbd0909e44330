-- Each container's state as analytics last saw it: the latest fill level, the fill rate over the
-- current filling phase and when the container is expected to be full.
CREATE TABLE container_state (
    container_key       text PRIMARY KEY REFERENCES containers (key),
    fill_level          double precision,
    fill_at             timestamptz,
    fill_rate_per_hour  double precision,
    full_at             timestamptz,
    computed_at         timestamptz NOT NULL
);
