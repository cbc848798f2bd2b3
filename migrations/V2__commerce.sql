-- Leases, carts, reservations, orders, idempotency keys and campaigns.

-- Stock a node holds in memory for a SKU (the per-node slice of inventory.leased).
CREATE TABLE stock_leases (
    node_id    TEXT NOT NULL CHECK (length(node_id) BETWEEN 1 AND 128),
    sku        TEXT NOT NULL REFERENCES inventory (sku) ON DELETE CASCADE,
    quantity   BIGINT NOT NULL CHECK (quantity >= 0),
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (node_id, sku)
);
-- serves: the reaper's scan for leases of dead nodes (expires_at < now())
CREATE INDEX stock_leases_expires_idx ON stock_leases (expires_at);
-- serves: surge check's per-SKU sum of leased units
CREATE INDEX stock_leases_sku_idx ON stock_leases (sku);

-- One cart per shopper session. version rises on every change, so a stale copy
-- held by another node can never overwrite a newer one.
CREATE TABLE carts (
    id         UUID PRIMARY KEY,
    session_id TEXT NOT NULL CHECK (length(session_id) BETWEEN 1 AND 128),
    version    BIGINT NOT NULL DEFAULT 0 CHECK (version >= 0),
    owner_node TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- serves: loading the cart of a session when its CartActor starts
CREATE UNIQUE INDEX carts_session_key ON carts (session_id);

-- A cart line and the stock it holds until expires_at (the inventory.reserved bucket).
CREATE TABLE reservations (
    cart_id    UUID NOT NULL REFERENCES carts (id) ON DELETE CASCADE,
    sku        TEXT NOT NULL REFERENCES inventory (sku),
    quantity   BIGINT NOT NULL CHECK (quantity > 0),
    node_id    TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (cart_id, sku)
);
-- serves: the reaper's scan for expired reservations of carts nobody holds
CREATE INDEX reservations_expires_idx ON reservations (expires_at);
-- serves: surge check's per-SKU sum of reserved units
CREATE INDEX reservations_sku_idx ON reservations (sku);

-- Orders are partitioned by month of creation; surge creates partitions ahead of time
-- (surge_ensure_order_partitions) at startup and on a timer.
CREATE TABLE orders (
    id              UUID NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    session_id      TEXT NOT NULL,
    email           TEXT NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    status          TEXT NOT NULL DEFAULT 'placed'
                    CHECK (status IN ('placed', 'paid', 'shipped', 'delivered', 'cancelled')),
    total_minor     BIGINT NOT NULL CHECK (total_minor >= 0),
    currency        CHAR(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    node_id         TEXT NOT NULL,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
-- serves: GET /api/orders/{id} (the id alone, across partitions)
CREATE INDEX orders_id_idx ON orders (id);
-- serves: listing a session's orders, newest first
CREATE INDEX orders_session_idx ON orders (session_id, created_at DESC);

CREATE TABLE order_lines (
    order_id         UUID NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    sku              TEXT NOT NULL REFERENCES variants (sku),
    quantity         BIGINT NOT NULL CHECK (quantity > 0),
    unit_price_minor BIGINT NOT NULL CHECK (unit_price_minor >= 0),
    currency         CHAR(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    PRIMARY KEY (order_id, created_at, sku),
    FOREIGN KEY (order_id, created_at) REFERENCES orders (id, created_at) ON DELETE CASCADE
) PARTITION BY RANGE (created_at);
-- serves: surge check's per-SKU sum of sold units
CREATE INDEX order_lines_sku_idx ON order_lines (sku);

-- Creates the monthly partitions of orders and order_lines from this month to
-- months_ahead months ahead. Idempotent; safe to call from every node at once.
CREATE FUNCTION surge_ensure_order_partitions(months_ahead INT) RETURNS INT
LANGUAGE plpgsql AS $$
DECLARE
    m       INT;
    lo      DATE;
    hi      DATE;
    suffix  TEXT;
    created INT := 0;
BEGIN
    -- Serialise concurrent callers so two nodes never race on CREATE TABLE.
    PERFORM pg_advisory_xact_lock(hashtext('surge_ensure_order_partitions'));
    FOR m IN 0..months_ahead LOOP
        lo := (date_trunc('month', now()) + make_interval(months => m))::date;
        hi := (lo + interval '1 month')::date;
        suffix := to_char(lo, 'YYYY_MM');
        IF to_regclass('orders_' || suffix) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF orders FOR VALUES FROM (%L) TO (%L)',
                           'orders_' || suffix, lo, hi);
            created := created + 1;
        END IF;
        IF to_regclass('order_lines_' || suffix) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF order_lines FOR VALUES FROM (%L) TO (%L)',
                           'order_lines_' || suffix, lo, hi);
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$$;

SELECT surge_ensure_order_partitions(3);

-- A checkout's Idempotency-Key, per session: a repeat returns the same order.
CREATE TABLE idempotency_keys (
    session_id TEXT NOT NULL,
    key        TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    order_id   UUID NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, key)
);
-- serves: the periodic purge of keys older than the retention window
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- Announced sales: shoppers' sockets get a `campaign` message when one starts.
CREATE TABLE campaigns (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    product_id  BIGINT REFERENCES products (id) ON DELETE CASCADE,
    starts_at   TIMESTAMPTZ NOT NULL,
    ends_at     TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);
-- serves: finding campaigns that start or run within a time window
CREATE INDEX campaigns_window_idx ON campaigns (starts_at, ends_at);
