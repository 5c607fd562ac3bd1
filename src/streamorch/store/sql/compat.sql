-- Queries of the original-instance protocols (api/routes/compat.py), one per
-- `-- name: <name>` header, loaded by store/compat.py. Stream keys that are decimal
-- ids are the only ones those protocols can name. `compat_handouts` holds what was
-- handed to an instance's current registration and not released since: what the
-- client holds in its list.

-- name: instance
SELECT id, name, incarnation, status, kind, generation, capacity, labels, address,
       lease_expires_at > now() AS lease_valid
  FROM workers WHERE name = %(name)s;

-- name: mark_original
-- A fresh registration of an original instance (registered with kind 'original' by the
-- engine store, so placement never saw it as a target): nothing handed to it yet, and what was
-- being stopped there is gone (the new process runs nothing of it).
WITH w AS (
    -- The same server_id restarting keeps its generation once a heartbeat told it.
    UPDATE workers SET generation = CASE WHEN %(generation)s = 'C1/C2' AND generation IN ('C1', 'C2')
                                         THEN generation ELSE %(generation)s END,
                       metrics = %(metrics)s::jsonb
     WHERE id = %(id)s
    RETURNING id
), h AS (
    DELETE FROM compat_handouts WHERE worker_id = %(id)s
)
DELETE FROM assignments WHERE worker_id = %(id)s AND state = 'revoking'
RETURNING stream_key;

-- name: beat
-- The heartbeat of a live original instance. It names no stream, so what it runs is
-- what it owns: a revoke there (deleted or disabled stream) finishes only when it
-- releases the stream, its lease expires, or it registers again.
UPDATE workers w
   SET last_heartbeat = now(),
       lease_expires_at = now() + make_interval(secs => %(ttl)s),
       running = ARRAY(SELECT a.stream_key FROM assignments a WHERE a.worker_id = w.id
                        ORDER BY a.stream_key),
       metrics = %(metrics)s::jsonb,
       generation = CASE WHEN w.generation IN ('C1/C2', 'C1', 'C2') AND %(generation)s::text IS NOT NULL
                         THEN %(generation)s ELSE w.generation END
 -- Live until a reconcile pass expired it, even if its lease ran out meanwhile: nothing
 -- moved off it yet.
 WHERE w.name = %(name)s AND w.status IN ('active', 'draining')
RETURNING w.id;

-- name: recover
-- A revived instance still holds (and may run) what it was handed: take back what
-- nobody else took meanwhile. Run under the reconcile lock (a pass inserts grants).
INSERT INTO assignments (stream_key, worker_id, token, reason)
SELECT h.stream_key, h.worker_id, nextval('fencing_tokens'), 'revived'
  FROM compat_handouts h JOIN streams s ON s.key = h.stream_key AND s.enabled
 WHERE h.worker_id = %(id)s
   AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.stream_key = h.stream_key)
ORDER BY h.stream_key
ON CONFLICT (stream_key) DO NOTHING
RETURNING stream_key, token;

-- name: handed
SELECT stream_key FROM compat_handouts WHERE worker_id = %(id)s ORDER BY stream_key;

-- name: lock_instance
SELECT w.status, w.lease_expires_at > now() AS lease_valid, w.capacity, w.labels,
       coalesce((SELECT sum(coalesce(s.weight, 1)) FROM assignments a
                   LEFT JOIN streams s ON s.key = a.stream_key
                  WHERE a.worker_id = w.id), 0)::int AS load
  FROM workers w WHERE w.id = %(id)s FOR UPDATE;

-- name: reserved
-- Streams it owns that its current registration was not handed yet: its own from
-- before a restart. Oldest first.
SELECT a.stream_key FROM assignments a
 WHERE a.worker_id = %(id)s AND a.state = 'granted'
   AND a.stream_key ~ '^(0|[1-9][0-9]{0,17})$'
   AND NOT EXISTS (SELECT 1 FROM compat_handouts h
                    WHERE h.worker_id = a.worker_id AND h.stream_key = a.stream_key)
 ORDER BY a.since, a.stream_key
 LIMIT %(limit)s;

-- name: unclaimed
-- A second-generation instance pulls once after it starts and runs only what that pull
-- returned: what it owned and did not get back now would run nowhere. Free it.
DELETE FROM assignments a
 WHERE a.worker_id = %(id)s AND a.state = 'granted'
   AND NOT EXISTS (SELECT 1 FROM compat_handouts h
                    WHERE h.worker_id = a.worker_id AND h.stream_key = a.stream_key)
RETURNING a.stream_key;

-- name: pool
-- Enabled, unassigned streams the instance may take (labels satisfy `requires`) and was
-- not handed already, lowest id first, as many as fit in `room`.
SELECT key FROM (
    SELECT s.key, sum(s.weight) OVER (ORDER BY s.key::numeric) AS total
      FROM streams s
     WHERE s.enabled AND s.key ~ '^(0|[1-9][0-9]{0,17})$'
       AND s.requires <@ %(labels)s::jsonb
       AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.stream_key = s.key)
       AND NOT EXISTS (SELECT 1 FROM compat_handouts h
                        WHERE h.worker_id = %(id)s AND h.stream_key = s.key)
     ORDER BY s.key::numeric
     LIMIT %(limit)s
) t WHERE total <= %(room)s;

-- name: pool_exists
SELECT EXISTS (
    SELECT 1 FROM streams s
     WHERE s.enabled AND s.key ~ '^(0|[1-9][0-9]{0,17})$'
       AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.stream_key = s.key));

-- name: take
INSERT INTO assignments (stream_key, worker_id, token, reason)
SELECT k, %(id)s, nextval('fencing_tokens'), 'pulled' FROM unnest(%(keys)s::text[]) AS t(k)
ON CONFLICT (stream_key) DO NOTHING
RETURNING stream_key, token;

-- name: record_handouts
INSERT INTO compat_handouts (worker_id, stream_key)
SELECT %(id)s, k FROM unnest(%(keys)s::text[]) AS t(k)
ON CONFLICT DO NOTHING;

-- name: sync_running
UPDATE workers w
   SET running = ARRAY(SELECT a.stream_key FROM assignments a WHERE a.worker_id = w.id
                        ORDER BY a.stream_key)
 WHERE w.id = %(id)s;

-- name: release
DELETE FROM assignments WHERE worker_id = %(id)s AND stream_key = ANY (%(keys)s::text[])
RETURNING stream_key;

-- name: forget_handouts
DELETE FROM compat_handouts WHERE worker_id = %(id)s AND stream_key = ANY (%(keys)s::text[])
RETURNING stream_key;

-- name: instances
-- Every worker that has not left, newest registration first: the original view of the fleet.
SELECT w.id, w.name, w.status, w.kind, w.generation, w.capacity, w.labels, w.address,
       w.registered_at, w.last_heartbeat, w.lease_expires_at, w.metrics,
       cardinality(w.running) AS running_count,
       coalesce((SELECT sum(coalesce(s.weight, 1)) FROM assignments a
                   LEFT JOIN streams s ON s.key = a.stream_key
                  WHERE a.worker_id = w.id), 0)::int AS load,
       -- As JSON, not arrays: the server reads them as bytes and parses them off the event
       -- loop (store/rows.py); a text[] of every stream of the fleet is parsed where it is read.
       (SELECT coalesce(json_agg(a.stream_key ORDER BY a.stream_key), '[]')
          FROM assignments a WHERE a.worker_id = w.id AND a.state = 'granted') AS owned,
       (SELECT coalesce(json_agg(h.stream_key ORDER BY h.stream_key), '[]')
          FROM compat_handouts h WHERE h.worker_id = w.id) AS handed
  FROM workers w
 WHERE w.status <> 'left' AND (%(name)s::text IS NULL OR w.name = %(name)s)
 ORDER BY w.registered_at DESC, w.name;

-- name: assignments
SELECT a.stream_key, w.name, a.since, a.state, w.address
  FROM assignments a JOIN workers w ON w.id = a.worker_id
 WHERE a.stream_key ~ '^(0|[1-9][0-9]{0,17})$'
 ORDER BY a.since DESC, a.stream_key;

-- name: stream_urls
SELECT key, url FROM streams WHERE key = ANY (%(keys)s::text[]);
