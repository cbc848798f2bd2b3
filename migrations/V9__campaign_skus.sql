-- Campaigns that gate and price: the SKUs a campaign sells, with their sale prices, and
-- the per-customer limit and waiting-room rate it is scheduled with.
ALTER TABLE campaigns
    ADD COLUMN per_customer_limit INTEGER CHECK (per_customer_limit > 0),
    ADD COLUMN admit_per_second   INTEGER CHECK (admit_per_second > 0);

-- A SKU belongs to at most one campaign whose window overlaps: the insert checks it
-- under a lock on `campaign_skus` (no exclusion constraint: btree_gist is an extension).
CREATE TABLE campaign_skus (
    campaign_id      UUID NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    sku              TEXT NOT NULL REFERENCES variants (sku) ON DELETE CASCADE,
    sale_price_minor BIGINT CHECK (sale_price_minor > 0),
    PRIMARY KEY (campaign_id, sku)
);
-- serves: the Journal's price check and the overlap check, both by SKU
CREATE INDEX campaign_skus_sku_idx ON campaign_skus (sku);
