-- Grows with every change to the catalog or the fleet that placement must see
-- (not with heartbeats): a reconcile pass with nothing new to consider skips
-- planning. Updated in the same transaction as the change it counts.
ALTER TABLE cluster ADD COLUMN generation bigint NOT NULL DEFAULT 0;
