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
