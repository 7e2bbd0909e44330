-- An optional rate-of-rise threshold per level sensor, in the sensor's unit per hour: rising this
-- fast raises an expected Flood Alert whatever the level.
ALTER TABLE level_thresholds ADD COLUMN rate_alert double precision;
