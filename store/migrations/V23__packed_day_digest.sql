-- Each packed day carries the SHA-256 of its hours, kept by PostgreSQL itself (a stored generated
-- column, so every way a row is written, the refresh's, V18's or an UPDATE's, keeps it true). A
-- reader that already holds what it wrote from a day's hours (the API keeps days of hourly
-- buckets written as JSON) reads the day's 32-byte digest instead, and the hours only of the days
-- it does not hold: about 1.3 kB a day less to read and send. SHA-256 rather than a shorter hash,
-- so that no one can choose readings that give two different days one digest.
ALTER TABLE readings_1h_days ADD COLUMN digest bytea GENERATED ALWAYS AS (sha256(hours)) STORED;
