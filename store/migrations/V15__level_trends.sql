-- Each level sensor as flood analytics last saw it: the severity its thresholds give at its newest
-- usable reading, its rate of rise, and when it would reach the next threshold. Rewritten on every
-- evaluation; the map dashboard colours stations and draws projections from it.
CREATE TABLE level_trends (
    sensor_key          text PRIMARY KEY,
    at                  timestamptz NOT NULL,
    value               double precision NOT NULL,
    severity            smallint CHECK (severity BETWEEN 1 AND 3),
    -- The sensor's unit per hour; NULL with too few readings in the rate window.
    rate_per_hour       double precision,
    projected_severity  smallint CHECK (projected_severity BETWEEN 1 AND 3),
    projected_at        timestamptz,
    evaluated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((projected_severity IS NULL) = (projected_at IS NULL))
);
