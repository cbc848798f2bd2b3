-- What the purge job deletes, found without a scan of the whole table.

-- serves: the purge of empty carts untouched for the retention age (oldest first)
CREATE INDEX carts_updated_idx ON carts (updated_at);
