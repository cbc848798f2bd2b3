-- Per-customer limits: units each customer (normalized checkout email) has ordered in
-- a limited campaign. The Journal locks a batch's rows in (campaign_id, customer) order
-- and updates them in the same commit as the orders, so no two nodes both let one
-- customer past the limit.
CREATE TABLE campaign_customers (
    campaign_id UUID   NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    customer    TEXT   NOT NULL,
    units       BIGINT NOT NULL DEFAULT 0 CHECK (units >= 0),
    PRIMARY KEY (campaign_id, customer)
);

-- How long one campaign hold lasts from its first reservation; NULL: the node's
-- reservation TTL.
ALTER TABLE campaigns ADD COLUMN hold_secs INTEGER CHECK (hold_secs > 0);

-- What each order counted against a limit, so a cancellation gives exactly that back
-- (orders are partitioned by time, so `order_id` has no foreign key).
CREATE TABLE campaign_order_units (
    order_id    UUID   NOT NULL,
    campaign_id UUID   NOT NULL,
    customer    TEXT   NOT NULL,
    units       BIGINT NOT NULL CHECK (units > 0),
    PRIMARY KEY (order_id, campaign_id),
    FOREIGN KEY (campaign_id, customer) REFERENCES campaign_customers (campaign_id, customer) ON DELETE CASCADE
);
