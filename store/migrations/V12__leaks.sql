-- Water networks: a leak rule per district meter (its night window in Danish local time, the
-- nights that make its baseline, how far above the baseline a night must be and for how many
-- nights), each night's minimum flow as analytics find it, and the leaks they suspect.
CREATE TABLE leak_rules (
    sensor_key       text PRIMARY KEY REFERENCES sensors (key),
    night_start      time NOT NULL,
    night_end        time NOT NULL,
    baseline_nights  integer NOT NULL CHECK (baseline_nights BETWEEN 1 AND 90),
    margin           double precision NOT NULL CHECK (margin > 0 AND margin < 100),
    nights           integer NOT NULL CHECK (nights BETWEEN 1 AND 30),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (night_start < night_end)
);

CREATE TABLE night_flow (
    sensor_key  text NOT NULL REFERENCES sensors (key),
    night       date NOT NULL,
    min_value   double precision NOT NULL,
    at          timestamptz NOT NULL,
    samples     integer NOT NULL,
    PRIMARY KEY (sensor_key, night)
);

-- A suspected leak: from its first night above the baseline; found again, never duplicated.
CREATE TABLE leak_suspicions (
    sensor_key  text NOT NULL REFERENCES sensors (key),
    since       date NOT NULL,
    raised_on   date NOT NULL,
    baseline    double precision NOT NULL,
    night_flow  double precision NOT NULL,
    found_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sensor_key, since)
);
