-- Retention (store/retention.py): departed workers forgotten, old events deleted, each
-- in small batches of one short transaction. Named parameters only.

-- name: retention_lock
-- Held by the transaction of one batch: replicas never work on the same rows at once.
SELECT pg_try_advisory_xact_lock(%(key)s);

-- name: departed_before
-- Departed workers whose departure (the end of their lease) came before the cutoff,
-- oldest first (the workers_departed index).
SELECT id FROM workers
 WHERE status IN ('expired', 'left') AND lease_expires_at < %(cutoff)s
 ORDER BY lease_expires_at
 LIMIT %(limit)s;

-- name: lock_departed
-- Locked in id order (like heartbeats); the status is checked again on the locked row:
-- a worker that registered again meanwhile is live and kept. One still named in an
-- assignment (a move to it not yet undone) is kept for a later batch. While locked, no
-- assignment can name it (the foreign key check waits for the lock).
SELECT w.id, w.name FROM workers w
 WHERE w.id = ANY (%(ids)s::uuid[]) AND w.status IN ('expired', 'left')
   AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.worker_id = w.id)
   AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.target_id = w.id)
 ORDER BY w.id
   FOR UPDATE OF w;

-- name: name_events
-- Events written before they carried their worker's name get it now (events_unnamed).
UPDATE events e SET worker_name = w.name
  FROM workers w
 WHERE e.worker_id = ANY (%(ids)s::uuid[]) AND e.worker_name IS NULL
   AND e.worker_id IS NOT NULL AND w.id = e.worker_id;

-- name: forget_handouts
DELETE FROM compat_handouts WHERE worker_id = ANY (%(ids)s::uuid[]);

-- name: forget_workers
-- The rows lock_departed locked and checked.
DELETE FROM workers WHERE id = ANY (%(ids)s::uuid[]);

-- name: purge_events
-- Among the `limit` oldest events, those older than the cutoff or beyond the newest
-- `keep` (either bound NULL: not applied). Ids grow with time, so a batch that deletes
-- fewer than `limit` rows means nothing older is left. Ids count events from above:
-- gaps (rolled-back inserts) only make fewer than `keep` events remain.
WITH oldest AS (
    SELECT id FROM events ORDER BY id LIMIT %(limit)s
), newest AS (
    SELECT max(id) AS id FROM events
)
DELETE FROM events e
 USING oldest, newest
 WHERE e.id = oldest.id
   AND (e.at < %(cutoff)s::timestamptz OR e.id <= newest.id - %(keep)s::bigint);

-- name: table_sizes
-- Rows (planner estimates: no scan) and bytes of the tables that grow with history.
SELECT c.relname AS name, greatest(c.reltuples, 0)::bigint AS rows,
       pg_total_relation_size(c.oid) AS bytes
  FROM pg_class c
 WHERE c.relname IN ('events', 'workers') AND c.relnamespace = 'public'::regnamespace;
