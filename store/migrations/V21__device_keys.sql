-- A device key posts SensorThings Observations for exactly one device, whose sensors it may
-- write; what it sends goes through the same checks as the device's MQTT messages.
ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_role_check;
ALTER TABLE api_keys ADD COLUMN device text REFERENCES devices (key);
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('researcher', 'utility', 'municipality', 'operator', 'producer', 'device'));
ALTER TABLE api_keys ADD CONSTRAINT api_keys_device_check
    CHECK ((role = 'device') = (device IS NOT NULL));
