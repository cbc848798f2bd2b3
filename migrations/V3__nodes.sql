-- Node liveness, and reservation prices so that a cart can be rebuilt from its rows.

-- Every node renews its row on a heartbeat; a node whose row has gone stale is dead,
-- and the reaper returns its leases and the expired reservations of its carts.
CREATE TABLE nodes (
    node_id      TEXT PRIMARY KEY CHECK (length(node_id) BETWEEN 1 AND 128),
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE reservations
    ADD COLUMN unit_price_minor BIGINT NOT NULL DEFAULT 0 CHECK (unit_price_minor >= 0),
    ADD COLUMN currency CHAR(3) NOT NULL DEFAULT 'EUR' CHECK (currency ~ '^[A-Z]{3}$');

-- serves: the reaper's scan for carts whose owner node is dead
CREATE INDEX carts_owner_idx ON carts (owner_node);
