-- Utility alerts travel through the warnings' event and outbox machinery under their own
-- category, so that nothing written for flood warnings ever picks one up by accident: a flood
-- warning is about a flood area, a leak alert about a district meter (a sensor).
ALTER TABLE warnings ADD COLUMN category text NOT NULL DEFAULT 'flood'
    CHECK (category IN ('flood', 'leak'));
ALTER TABLE warnings ALTER COLUMN area_key DROP NOT NULL;
ALTER TABLE warnings ADD COLUMN sensor_key text REFERENCES sensors (key);
ALTER TABLE warnings ADD CONSTRAINT warnings_subject CHECK (
    CASE category
        WHEN 'flood' THEN area_key IS NOT NULL AND sensor_key IS NULL
        ELSE area_key IS NULL AND sensor_key IS NOT NULL
    END);
CREATE UNIQUE INDEX warnings_one_alert_in_force ON warnings (category, sensor_key)
    WHERE state = 'in_force' AND sensor_key IS NOT NULL;

ALTER TABLE warning_events ADD COLUMN category text NOT NULL DEFAULT 'flood'
    CHECK (category IN ('flood', 'leak'));
ALTER TABLE warning_events ALTER COLUMN area_key DROP NOT NULL;
ALTER TABLE warning_events ADD COLUMN sensor_key text;
ALTER TABLE warning_events ADD CONSTRAINT warning_events_subject CHECK (
    CASE category
        WHEN 'flood' THEN area_key IS NOT NULL AND sensor_key IS NULL
        ELSE area_key IS NULL AND sensor_key IS NOT NULL
    END);
CREATE INDEX warning_events_sensor ON warning_events (sensor_key, id) WHERE sensor_key IS NOT NULL;

-- Which categories a webhook receives. Endpoints registered before utility alerts existed keep
-- receiving flood warnings only.
ALTER TABLE webhooks ADD COLUMN categories text[] NOT NULL DEFAULT '{flood}'
    CHECK (cardinality(categories) > 0 AND categories <@ ARRAY['flood', 'leak']);

-- A suspected leak ends on the first night back within the margin of its baseline; the alert
-- raised for it is lifted then.
ALTER TABLE leak_suspicions ADD COLUMN ended_on date;
ALTER TABLE leak_suspicions ADD COLUMN warning_id bigint REFERENCES warnings (id);
-- Suspicions recorded before ends were: each but a meter's latest ended when the next began.
UPDATE leak_suspicions l SET ended_on = (
    SELECT min(n.since) FROM leak_suspicions n WHERE n.sensor_key = l.sensor_key AND n.since > l.since)
WHERE EXISTS (SELECT 1 FROM leak_suspicions n WHERE n.sensor_key = l.sensor_key AND n.since > l.since);
CREATE UNIQUE INDEX leak_suspicions_one_open ON leak_suspicions (sensor_key) WHERE ended_on IS NULL;
