-- Queries of the original-instance protocol (api/routes/compat.py), one per
-- `-- name: <name>` header, loaded by store/compat.py. Stream keys that are decimal
-- ids are the only ones that protocol can name.

-- name: instance
SELECT id, incarnation, status, lease_expires_at > now() AS lease_valid
  FROM workers WHERE name = %(name)s;

-- name: clear_handouts
DELETE FROM compat_handouts WHERE worker_id = %(id)s;

-- name: settle_handouts
-- Hand-outs the instance now reports running are tracked by its reports from here on;
-- one it has not reported within a lease TTL was never started. The rest still count
-- as running there. (The SELECT sees the rows as they were before the DELETE.)
WITH settled AS (
    DELETE FROM compat_handouts
     WHERE worker_id = %(id)s
       AND (stream_key = ANY (%(running)s::text[])
            OR handed_at < now() - make_interval(secs => %(ttl)s))
)
SELECT stream_key FROM compat_handouts
 WHERE worker_id = %(id)s
   AND NOT (stream_key = ANY (%(running)s::text[]))
   AND handed_at >= now() - make_interval(secs => %(ttl)s)
 ORDER BY stream_key;

-- name: lock_instance
SELECT status, lease_expires_at > now() AS lease_valid FROM workers WHERE id = %(id)s FOR UPDATE;

-- name: hand_out
-- Streams granted to the instance that it neither runs nor was handed recently,
-- oldest grant first.
WITH picked AS (
    SELECT a.stream_key
      FROM assignments a JOIN workers w ON w.id = a.worker_id
     WHERE w.id = %(id)s AND a.state = 'granted'
       AND a.stream_key ~ '^(0|[1-9][0-9]{0,17})$'
       AND NOT (a.stream_key = ANY (w.running))
       AND NOT EXISTS (SELECT 1 FROM compat_handouts h
                        WHERE h.worker_id = w.id AND h.stream_key = a.stream_key
                          AND h.handed_at >= now() - make_interval(secs => %(ttl)s))
     ORDER BY a.since, a.stream_key
     LIMIT %(limit)s
)
INSERT INTO compat_handouts (worker_id, stream_key)
SELECT %(id)s, stream_key FROM picked
ON CONFLICT (worker_id, stream_key) DO UPDATE SET handed_at = now()
RETURNING stream_key;

-- name: add_running
-- A hand-out counts as running from the moment it is made: a pass that began before
-- the instance's last report could otherwise take that report as the stop of a
-- stream the instance is only now starting (revoked_at is the pass's start time).
UPDATE workers SET running = running || %(keys)s::text[] WHERE id = %(id)s;

-- name: restore_handouts
-- After a heartbeat: hand-outs made while it was in flight are running too.
UPDATE workers w
   SET running = w.running || ARRAY(
           SELECT h.stream_key FROM compat_handouts h
            WHERE h.worker_id = w.id AND NOT (h.stream_key = ANY (w.running))
              AND h.handed_at >= now() - make_interval(secs => %(ttl)s))
 WHERE w.id = %(id)s
   AND EXISTS (SELECT 1 FROM compat_handouts h
                WHERE h.worker_id = w.id AND NOT (h.stream_key = ANY (w.running))
                  AND h.handed_at >= now() - make_interval(secs => %(ttl)s));

-- name: owned
SELECT a.stream_key, a.state, coalesce(s.weight, 1) AS weight,
       coalesce(s.requires, '{}'::jsonb) AS requires
  FROM assignments a LEFT JOIN streams s ON s.key = a.stream_key
 WHERE a.worker_id = %(id)s AND a.stream_key = ANY (%(keys)s::text[])
   FOR UPDATE OF a;

-- name: release_targets
-- Live, active workers other than the releasing one, with what they run or have
-- reserved for streams moving to them.
SELECT w.id::text, w.capacity, w.labels,
       coalesce((SELECT sum(coalesce(s.weight, 1))
                   FROM assignments a LEFT JOIN streams s ON s.key = a.stream_key
                  WHERE a.worker_id = w.id OR a.target_id = w.id), 0)::int AS load
  FROM workers w
 WHERE w.status = 'active' AND w.lease_expires_at > now() AND w.id <> %(id)s;

-- name: release
UPDATE assignments a
   SET state = 'revoking', revoked_at = now(), target_id = t.target, reason = 'released'
  FROM unnest(%(keys)s::text[], %(targets)s::uuid[]) AS t(k, target)
 WHERE a.stream_key = t.k AND a.worker_id = %(id)s AND a.state = 'granted'
RETURNING a.stream_key, a.target_id;

-- name: forget_handouts
DELETE FROM compat_handouts WHERE worker_id = %(id)s AND stream_key = ANY (%(keys)s::text[]);

-- name: instances
SELECT w.id, w.name, w.status, w.capacity, w.labels, w.address, w.running,
       w.last_heartbeat, w.lease_expires_at,
       coalesce((SELECT array_agg(a.stream_key ORDER BY a.stream_key) FROM assignments a
                  WHERE a.worker_id = w.id AND a.state = 'granted'), '{}') AS granted
  FROM workers w
 WHERE w.status <> 'left'
 ORDER BY w.name;

-- name: owners
SELECT a.stream_key, w.name, a.state
  FROM assignments a JOIN workers w ON w.id = a.worker_id
 WHERE a.stream_key ~ '^(0|[1-9][0-9]{0,17})$';
