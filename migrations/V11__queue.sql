-- The waiting room: one row per session that joined a campaign's queue, with its slot
-- (its turn in admission order), and a row per campaign with the next free slot. A
-- join takes the campaign's counter row lock, so slots are handed out one at a time
-- in the order the joins commit, on whichever node they arrive.
CREATE TABLE queue_counters (
    campaign_id UUID PRIMARY KEY REFERENCES campaigns (id) ON DELETE CASCADE,
    joined      BIGINT NOT NULL DEFAULT 0 CHECK (joined >= 0),
    next_slot   BIGINT NOT NULL DEFAULT 0 CHECK (next_slot >= 0)
);

CREATE TABLE queue_entries (
    campaign_id UUID NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    session_id  TEXT NOT NULL,
    slot        BIGINT NOT NULL CHECK (slot >= 0),
    joined_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (campaign_id, session_id),
    UNIQUE (campaign_id, slot)
);
