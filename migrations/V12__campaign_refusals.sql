-- Refused shopper writes per campaign, code and node: each node adds its deltas about
-- once a second (one row per pair it saw), so a refusal storm is counted in memory and
-- no single row is hot; a report sums the nodes.
CREATE TABLE campaign_refusals (
    campaign_id UUID NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    node_id     TEXT NOT NULL CHECK (length(node_id) BETWEEN 1 AND 128),
    code        TEXT NOT NULL CHECK (length(code) BETWEEN 1 AND 64),
    count       BIGINT NOT NULL CHECK (count >= 0),
    PRIMARY KEY (campaign_id, node_id, code)
);

-- Each node's open sockets as of its last heartbeat, so a report can sum the live ones.
ALTER TABLE nodes ADD COLUMN sockets BIGINT NOT NULL DEFAULT 0 CHECK (sockets >= 0);
