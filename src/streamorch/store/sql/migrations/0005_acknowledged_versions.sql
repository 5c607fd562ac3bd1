-- A move finishes only on a stop report that reflects the revoke. Heartbeats say
-- which desired-set version their `running` list reflects (acked_version); a
-- revoke records the owner's version that no longer contains the stream
-- (revoke_version). A report acknowledging an older version proves nothing: it may
-- have been written before the worker learned of the grant it is about to act on.
ALTER TABLE workers ADD COLUMN acked_version bigint;
ALTER TABLE assignments ADD COLUMN revoke_version bigint;
