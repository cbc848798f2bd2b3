-- A per-SKU change counter: every write to an inventory row raises it, so every node
-- can order stock values for the same SKU and shoppers' browsers drop stale ones.
ALTER TABLE inventory ADD COLUMN stock_seq BIGINT NOT NULL DEFAULT 0 CHECK (stock_seq >= 0);
