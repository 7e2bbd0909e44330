-- Data-quality rules for sensors outside flood areas (meters, containers): the sensor's plausible
-- range and the smallest jump that counts as a spike, in its canonical unit. Flood sensors take
-- theirs from their thresholds. Analytics flag readings that break them.
CREATE TABLE quality_rules (
    sensor_key      text PRIMARY KEY REFERENCES sensors (key),
    plausible_low   double precision NOT NULL,
    plausible_high  double precision NOT NULL,
    spike_floor     double precision NOT NULL CHECK (spike_floor >= 0),
    -- Equal consecutive values that make a run stuck; 0 turns the check off.
    stuck_run       integer NOT NULL CHECK (stuck_run >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (plausible_low < plausible_high)
);
