-- Fencing: every lease row carries the epoch it was created with. A node records the
-- epoch of the lease it sells from; once the reaper deletes a row (the node looked
-- dead), a later row for the same node and SKU has a new epoch, so reserves planned
-- from the old lease are refused and the node drops it.
CREATE SEQUENCE stock_lease_epoch;
ALTER TABLE stock_leases ADD COLUMN epoch BIGINT NOT NULL DEFAULT nextval('stock_lease_epoch');
