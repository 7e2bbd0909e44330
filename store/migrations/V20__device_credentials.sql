-- Device logins issued over the API: a password (shown once, kept only by the broker) or a
-- registered client certificate. A device has at most one credential in force; issuing another
-- revokes the one before. The broker's dynamic-security plugin holds the login itself; this is
-- the record of who issued and revoked what, and the list the API shows.
CREATE TABLE device_credentials (
    id          bigserial PRIMARY KEY,
    device_id   integer NOT NULL REFERENCES devices (id),
    kind        text NOT NULL CHECK (kind IN ('password', 'certificate')),
    -- A certificate's SHA-256 (hex, of its DER) and the end of its validity.
    fingerprint text,
    not_after   timestamptz,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    issued_by   text NOT NULL,
    revoked_at  timestamptz,
    revoked_by  text,
    CHECK ((kind = 'certificate') = (fingerprint IS NOT NULL AND not_after IS NOT NULL)),
    CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);
CREATE UNIQUE INDEX device_credentials_in_force ON device_credentials (device_id)
    WHERE revoked_at IS NULL;
