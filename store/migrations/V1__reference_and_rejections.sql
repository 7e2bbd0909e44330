-- Reference data: who may publish what, and where it is.

CREATE TABLE devices (
    id          serial PRIMARY KEY,
    key         text NOT NULL UNIQUE,
    name        text NOT NULL DEFAULT '',
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE stations (
    id                 serial PRIMARY KEY,
    key                text NOT NULL UNIQUE,
    name               text NOT NULL,
    kind               text NOT NULL,
    lon                double precision NOT NULL CHECK (lon BETWEEN -180 AND 180),
    lat                double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
    municipality_code  text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sensors (
    id                 serial PRIMARY KEY,
    key                text NOT NULL UNIQUE,
    device_id          integer NOT NULL REFERENCES devices (id),
    station_id         integer REFERENCES stations (id),
    quantity           text NOT NULL,
    name               text NOT NULL DEFAULT '',
    -- How often the sensor is expected to report; staleness is judged against it.
    expected_interval  interval NOT NULL DEFAULT interval '15 minutes',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sensors_device_id ON sensors (device_id);
CREATE INDEX sensors_station_id ON sensors (station_id);

-- Everything ingest refuses is kept here with its reason. A redelivered copy of a message that was
-- already rejected is absorbed by the unique index, as redelivered readings are by readings' key.
CREATE TABLE rejected_messages (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL,
    topic        text NOT NULL,
    device       text,
    payload      bytea NOT NULL,
    -- Which entry of a multi-reading message; -1 for the whole message.
    entry        integer NOT NULL DEFAULT -1,
    reason_code  text NOT NULL,
    reason       text NOT NULL
);
CREATE UNIQUE INDEX rejected_messages_once ON rejected_messages (topic, md5(payload), entry, reason_code);
CREATE INDEX rejected_messages_received_at ON rejected_messages (received_at);
