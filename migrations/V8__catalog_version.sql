-- The catalog's version: one row, raised by every catalog write (product upsert, variant
-- retirement) in the write's own transaction, so a node that reads version v before
-- loading the catalog holds a catalog at least as new as v. A row and not a sequence:
-- a sequence moves before its transaction commits, so a node could read the new number
-- with the old catalog and never reload.
CREATE TABLE catalog_version (
    id      BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    version BIGINT NOT NULL CHECK (version >= 0)
);
INSERT INTO catalog_version (id, version) VALUES (true, 0);
