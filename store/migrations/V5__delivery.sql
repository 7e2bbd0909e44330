-- Warning delivery: API keys, webhook endpoints, every delivery attempt, and the event kinds
-- that delivery adds to a warning's history.

-- API keys. Only a SHA-256 hash of the key is kept; the key itself is shown once.
CREATE TABLE api_keys (
    id            bigserial PRIMARY KEY,
    -- The public part of the key, for lookup and for naming it in logs and lists.
    prefix        text NOT NULL UNIQUE,
    hash          bytea NOT NULL,
    role          text NOT NULL CHECK (role IN ('researcher', 'utility', 'municipality', 'operator')),
    -- A municipality key acts for exactly one municipality.
    municipality  text REFERENCES municipalities (code),
    label         text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    CHECK ((role = 'municipality') = (municipality IS NOT NULL))
);

-- Webhook endpoints, registered over the API by municipalities, utilities and operators.
CREATE TABLE webhooks (
    id                    bigserial PRIMARY KEY,
    owner_key             bigint NOT NULL REFERENCES api_keys (id),
    -- The owner's municipality for a municipality key; their webhooks see only that one.
    owner_municipality    text,
    url                   text NOT NULL,
    description           text NOT NULL DEFAULT '',
    -- Filters; an empty array matches everything.
    municipalities        text[] NOT NULL DEFAULT '{}',
    areas                 text[] NOT NULL DEFAULT '{}',
    min_severity          smallint NOT NULL DEFAULT 1 CHECK (min_severity BETWEEN 1 AND 3),
    -- The signing secret ("whsec_" + base64 of at least 24 random bytes), and the one it replaced,
    -- which keeps signing beside the new one until previous_until so receivers can switch over.
    secret                text NOT NULL,
    previous_secret       text,
    previous_until        timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    disabled_at           timestamptz,
    disabled_reason       text,
    deleted_at            timestamptz
);

-- Every delivery attempt, successful or not.
CREATE TABLE delivery_attempts (
    id           bigserial PRIMARY KEY,
    outbox_id    bigint NOT NULL REFERENCES outbox (id),
    attempt      integer NOT NULL,
    started_at   timestamptz NOT NULL,
    latency_ms   double precision NOT NULL,
    -- The HTTP status for webhooks; NULL when no answer came.
    status       integer,
    ok           boolean NOT NULL,
    error        text
);
CREATE INDEX delivery_attempts_outbox ON delivery_attempts (outbox_id, attempt);

-- When a claimed row was first claimed: the retry horizon counts from here.
ALTER TABLE outbox ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX outbox_event ON outbox (event_id);

-- A delivery that was given up is an event on the warning, so operators see it in its history.
ALTER TABLE warning_events DROP CONSTRAINT warning_events_kind_check;
ALTER TABLE warning_events ADD CONSTRAINT warning_events_kind_check
    CHECK (kind IN ('raised', 'changed', 'lifted', 'acknowledged', 'stale', 'fresh', 'undelivered'));
CREATE INDEX warning_events_warning ON warning_events (warning_id, id);

-- Whether the warning was observed or expected when the event happened, for CAP's urgency and
-- certainty; NULL on events that do not change it.
ALTER TABLE warning_events ADD COLUMN warning_kind text CHECK (warning_kind IN ('observed', 'expected'));
