-- Flood geography, thresholds, and the warning lifecycle.

CREATE TABLE municipalities (
    code      text PRIMARY KEY,
    name      text NOT NULL,
    -- GeoJSON MultiPolygon, WGS84 longitude/latitude.
    boundary  jsonb NOT NULL
);

CREATE TABLE flood_areas (
    key                 text PRIMARY KEY,
    name                text NOT NULL,
    -- GeoJSON Polygon, WGS84 longitude/latitude.
    polygon             jsonb NOT NULL,
    -- The municipalities that receive this area's warnings.
    municipality_codes  text[] NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE flood_area_sensors (
    area_key    text NOT NULL REFERENCES flood_areas (key) ON DELETE CASCADE,
    sensor_key  text NOT NULL,
    PRIMARY KEY (area_key, sensor_key)
);

-- A gauge upstream of a flood area in the same river network, and the flood wave's travel time.
CREATE TABLE river_links (
    upstream_sensor  text NOT NULL,
    downstream_area  text NOT NULL REFERENCES flood_areas (key) ON DELETE CASCADE,
    travel_time      interval NOT NULL,
    PRIMARY KEY (upstream_sensor, downstream_area)
);

CREATE TABLE level_thresholds (
    sensor_key      text PRIMARY KEY,
    alert           double precision NOT NULL,
    warning         double precision NOT NULL,
    severe          double precision NOT NULL,
    persistence     interval NOT NULL,
    min_readings    integer NOT NULL,
    hysteresis      double precision NOT NULL,
    hold            interval NOT NULL,
    rate_window     interval NOT NULL,
    lead_time       interval NOT NULL,
    plausible_low   double precision NOT NULL,
    plausible_high  double precision NOT NULL,
    spike_floor     double precision NOT NULL,
    CHECK (alert < warning AND warning < severe)
);

CREATE TABLE rain_rules (
    sensor_key    text NOT NULL,
    window_length interval NOT NULL,
    more_than_mm  double precision NOT NULL,
    severity      smallint NOT NULL CHECK (severity BETWEEN 1 AND 3),
    PRIMARY KEY (sensor_key, window_length)
);

-- One row per warning episode: raised, changed, lifted. At most one in force per area.
CREATE TABLE warnings (
    id              bigserial PRIMARY KEY,
    area_key        text NOT NULL REFERENCES flood_areas (key),
    severity        smallint NOT NULL CHECK (severity BETWEEN 1 AND 3),
    -- observed (a measured crossing) or expected (a projection or an upstream crossing).
    kind            text NOT NULL CHECK (kind IN ('observed', 'expected')),
    state           text NOT NULL CHECK (state IN ('in_force', 'lifted')),
    raised_at       timestamptz NOT NULL,
    changed_at      timestamptz NOT NULL,
    lifted_at       timestamptz,
    stale           boolean NOT NULL DEFAULT false,
    municipalities  text[] NOT NULL,
    trigger         jsonb NOT NULL,
    message_en      text NOT NULL,
    message_da      text NOT NULL
);
CREATE UNIQUE INDEX warnings_one_in_force ON warnings (area_key) WHERE state = 'in_force';

-- Every raise, change, lift, acknowledgement and stale/fresh report. Never updated.
CREATE TABLE warning_events (
    id           bigserial PRIMARY KEY,
    warning_id   bigint NOT NULL REFERENCES warnings (id),
    area_key     text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('raised', 'changed', 'lifted', 'acknowledged', 'stale', 'fresh')),
    severity     smallint,
    -- When it happened in the data; recorded_at is when Tidemark wrote it.
    at           timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    message_en   text NOT NULL,
    message_da   text NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX warning_events_area_at ON warning_events (area_key, at);

CREATE FUNCTION warning_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'warning_events is append-only';
END
$$;
CREATE TRIGGER warning_events_append_only BEFORE UPDATE OR DELETE ON warning_events
    FOR EACH ROW EXECUTE FUNCTION warning_events_append_only();

-- One row per delivery to make, written with the event it delivers.
CREATE TABLE outbox (
    id               bigserial PRIMARY KEY,
    event_id         bigint NOT NULL REFERENCES warning_events (id),
    channel          text NOT NULL,
    target           text NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    delivered_at     timestamptz,
    dead_at          timestamptz
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at IS NULL AND dead_at IS NULL;

-- Every threshold crossing a sensor made, for warning verification (hit rate, false alarms, lead time).
CREATE TABLE threshold_crossings (
    sensor_key  text NOT NULL,
    severity    smallint NOT NULL,
    direction   text NOT NULL CHECK (direction IN ('up', 'down')),
    at          timestamptz NOT NULL,
    value       double precision NOT NULL,
    PRIMARY KEY (sensor_key, severity, direction, at)
);
