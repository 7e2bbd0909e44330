-- A rejected message is kept once, with its payload once, however many of its entries were refused.
-- Earlier releases wrote one rejected_messages row per refused entry, each with a copy of the whole
-- payload: a message of a thousand bad entries wrote its payload a thousand times. From here on,
-- rejected_messages holds one row per message (its first refusal in entry, reason_code and reason,
-- and how many entries were refused), and rejected_entries every refused entry.
ALTER TABLE rejected_messages ADD COLUMN entries_rejected integer NOT NULL DEFAULT 0;

CREATE TABLE rejected_entries (
    message_id   bigint NOT NULL REFERENCES rejected_messages (id) ON DELETE CASCADE,
    entry        integer NOT NULL CHECK (entry >= 0),
    reason_code  text NOT NULL,
    reason       text NOT NULL,
    PRIMARY KEY (message_id, entry, reason_code)
);

-- Fold the per-entry rows of earlier releases into the first row of their message (same topic,
-- payload and arrival).
CREATE TEMP TABLE rejected_fold AS
SELECT id, min(id) OVER (PARTITION BY topic, md5(payload), received_at) AS first
FROM rejected_messages
WHERE entry >= 0;

INSERT INTO rejected_entries (message_id, entry, reason_code, reason)
SELECT f.first, r.entry, r.reason_code, r.reason
FROM rejected_messages r JOIN rejected_fold f USING (id)
ON CONFLICT DO NOTHING;

DELETE FROM rejected_messages r USING rejected_fold f WHERE f.id = r.id AND f.id <> f.first;

UPDATE rejected_messages r
SET entries_rejected = (SELECT count(*) FROM rejected_entries e WHERE e.message_id = r.id)
WHERE r.entry >= 0;

DROP TABLE rejected_fold;
