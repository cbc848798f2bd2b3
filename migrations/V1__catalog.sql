-- Catalog: products and their sellable variants (one SKU each).

CREATE TABLE products (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug        TEXT NOT NULL CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,127}$'),
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description TEXT NOT NULL DEFAULT '' CHECK (length(description) <= 5000),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- serves: GET /api/products/{slug} fallbacks and the admin upsert's ON CONFLICT (slug)
CREATE UNIQUE INDEX products_slug_key ON products (slug);

CREATE TABLE variants (
    sku         TEXT PRIMARY KEY CHECK (sku ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    product_id  BIGINT NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    attributes  JSONB NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(attributes) = 'object'),
    price_minor BIGINT NOT NULL CHECK (price_minor >= 0),
    currency    CHAR(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    position    INT NOT NULL DEFAULT 0,
    -- A variant dropped from a product is retired, not deleted: orders still reference it.
    active      BOOLEAN NOT NULL DEFAULT true
);
-- serves: catalog load (variants of each product, in display order)
CREATE INDEX variants_product_position_idx ON variants (product_id, position);

-- Stock accounting, one row per SKU. Every unit is in exactly one bucket:
--   available: in PostgreSQL, not yet leased to any node
--   leased:    held by a node's in-memory shard, not yet reserved
--   reserved:  held by a cart line until its reservation expires
--   sold:      part of a placed order
-- The CHECK makes PostgreSQL refuse any commit that breaks conservation.
CREATE TABLE inventory (
    sku        TEXT PRIMARY KEY REFERENCES variants (sku) ON DELETE CASCADE,
    total      BIGINT NOT NULL CHECK (total >= 0),
    available  BIGINT NOT NULL CHECK (available >= 0),
    leased     BIGINT NOT NULL DEFAULT 0 CHECK (leased >= 0),
    reserved   BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold       BIGINT NOT NULL DEFAULT 0 CHECK (sold >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT inventory_conservation CHECK (total = available + leased + reserved + sold),
    CONSTRAINT inventory_sold_le_total CHECK (sold <= total)
);
