-- The container registry of the circular data bank, and what analytics find in each container's
-- readings: collections and overflow events. The events are recomputed from the readings whenever
-- readings arrive or the registry changes, so they are replaced, never edited by hand.
CREATE TABLE containers (
    key                text PRIMARY KEY,
    name               text NOT NULL,
    lon                double precision NOT NULL CHECK (lon BETWEEN -180 AND 180),
    lat                double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
    capacity_litres    double precision NOT NULL CHECK (capacity_litres > 0),
    -- A European List of Waste code, and the plain name of the fraction.
    waste_code         text NOT NULL,
    fraction           text NOT NULL CHECK (fraction IN ('paper', 'cardboard', 'plastic', 'glass',
                           'metal', 'food', 'garden', 'textiles', 'residual', 'mixed')),
    municipality_code  text REFERENCES municipalities (code),
    -- Fill level in percent of capacity.
    fill_sensor        text NOT NULL REFERENCES sensors (key),
    -- The mass collected at each emptying (a weighed lift), where there is one.
    weight_sensor      text REFERENCES sensors (key),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE container_collections (
    container_key  text NOT NULL REFERENCES containers (key),
    at             timestamptz NOT NULL,
    fill_before    double precision NOT NULL,
    fill_after     double precision NOT NULL,
    partial        boolean NOT NULL,
    volume_litres  double precision NOT NULL,
    mass_kg        double precision,
    PRIMARY KEY (container_key, at)
);

CREATE TABLE container_overflows (
    container_key  text NOT NULL REFERENCES containers (key),
    from_ts        timestamptz NOT NULL,
    -- Unset while the container is still full.
    until_ts       timestamptz,
    PRIMARY KEY (container_key, from_ts)
);
