-- Runtime queries, one per `-- name: <name>` header, named parameters only.
-- Loaded by store/queries.py. Set-based: arrays and unnest, never a round trip per row.

-- name: bump_generation
UPDATE cluster SET generation = generation + 1;

-- name: generation
SELECT generation FROM cluster;

-- name: upsert_stream
INSERT INTO streams (key, url, weight, labels, requires, enabled)
VALUES (%(key)s, %(url)s, %(weight)s, %(labels)s, %(requires)s, %(enabled)s)
ON CONFLICT (key) DO UPDATE
   SET url = EXCLUDED.url, weight = EXCLUDED.weight, labels = EXCLUDED.labels,
       requires = EXCLUDED.requires, enabled = EXCLUDED.enabled, updated_at = now()
RETURNING key, (xmax = 0) AS created;

-- name: bulk_upsert_streams
-- Arrays in binary format (the "b" placeholders): the text format escapes every element, which for
-- 100,000 JSON strings was most of a bulk call's time. JSON travels as text, cast here.
INSERT INTO streams AS s (key, url, weight, labels, requires, enabled)
SELECT k, u, w, l::jsonb, r::jsonb, e
  FROM unnest(%(keys)b::text[], %(urls)b::text[], %(weights)b::int[],
              %(labels)b::text[], %(requires)b::text[], %(enabled)b::boolean[])
       AS t(k, u, w, l, r, e)
ON CONFLICT (key) DO UPDATE
   SET url = EXCLUDED.url, weight = EXCLUDED.weight, labels = EXCLUDED.labels,
       requires = EXCLUDED.requires, enabled = EXCLUDED.enabled, updated_at = now()
 WHERE (s.url, s.weight, s.labels, s.requires, s.enabled)
       IS DISTINCT FROM (EXCLUDED.url, EXCLUDED.weight, EXCLUDED.labels, EXCLUDED.requires, EXCLUDED.enabled)
RETURNING (xmax = 0) AS created;

-- name: delete_streams_not_in
DELETE FROM streams WHERE NOT (key = ANY (%(keys)s::text[])) RETURNING key;

-- name: delete_streams
DELETE FROM streams WHERE key = ANY (%(keys)s::text[]) RETURNING key;

-- name: revoke_deleted
-- Deleted streams keep their assignment row until the owner stopped them (I1).
UPDATE assignments
   SET state = 'revoking', revoked_at = clock_timestamp(), target_id = NULL, reason = 'deleted'
 WHERE stream_key = ANY (%(keys)s::text[]) AND state = 'granted'
RETURNING stream_key, worker_id;

-- name: get_stream
SELECT s.key, s.url, s.weight, s.labels, s.requires, s.enabled, s.created_at, s.updated_at,
       a.worker_id, w.name AS worker_name, a.token, a.state, a.since, a.reason,
       a.target_id, t.name AS target_name
  FROM streams s
  LEFT JOIN assignments a ON a.stream_key = s.key
  LEFT JOIN workers w ON w.id = a.worker_id
  LEFT JOIN workers t ON t.id = a.target_id
 WHERE s.key = %(key)s;

-- name: list_streams
SELECT s.key, s.url, s.weight, s.labels, s.requires, s.enabled, s.created_at, s.updated_at,
       a.worker_id, w.name AS worker_name, a.token, a.state, a.since, a.reason,
       a.target_id, t.name AS target_name
  FROM streams s
  -- The cursor again on the assignments side: without it, a merge join reads every
  -- assignment before the cursor (100,000 at the end of the catalog).
  LEFT JOIN assignments a ON a.stream_key = s.key AND a.stream_key > %(after)s
  LEFT JOIN workers w ON w.id = a.worker_id
  LEFT JOIN workers t ON t.id = a.target_id
 WHERE s.key > %(after)s
   AND (%(state)s::text IS NULL
        OR (%(state)s = 'assigned' AND a.state = 'granted')
        OR (%(state)s = 'moving' AND a.state = 'revoking')
        OR (%(state)s = 'unassigned' AND a.stream_key IS NULL))
   AND (%(worker)s::text IS NULL OR w.name = %(worker)s OR a.worker_id::text = %(worker)s)
   AND (%(search)s::text IS NULL OR strpos(s.key, %(search)s) > 0)
 ORDER BY s.key
 LIMIT %(limit)s;

-- name: lock_worker_by_name
SELECT id, incarnation, status, lease_expires_at > now() AS lease_valid, secret_hash,
       greatest(extract(epoch FROM lease_expires_at - now()), 0)::float8 AS lease_left_s
  FROM workers WHERE name = %(name)s FOR UPDATE;

-- name: insert_worker
INSERT INTO workers (name, capacity, labels, address, kind, lease_expires_at, secret_hash)
VALUES (%(name)s, %(capacity)s, %(labels)s, %(address)s, %(kind)s,
        now() + make_interval(secs => %(ttl)s), %(secret_hash)s)
RETURNING id, incarnation, lease_expires_at;

-- name: worker_secret
SELECT secret_hash FROM workers WHERE id = %(id)s;

-- name: reincarnate_worker
UPDATE workers
   SET incarnation = incarnation + 1, capacity = %(capacity)s, labels = %(labels)s,
       address = %(address)s, kind = %(kind)s, status = 'active', running = '{}', metrics = '{}',
       acked_version = NULL, secret_hash = %(secret_hash)s,
       version = version + 1, registered_at = now(), last_heartbeat = now(),
       lease_expires_at = now() + make_interval(secs => %(ttl)s)
 WHERE id = %(id)s
RETURNING id, incarnation, lease_expires_at;

-- name: regrant_all
-- A worker re-registering within its lease keeps its streams, each with a fresh token.
UPDATE assignments SET token = nextval('fencing_tokens'), since = now()
 WHERE worker_id = %(id)s AND state = 'granted'
RETURNING stream_key;

-- name: release_all
DELETE FROM assignments WHERE worker_id = %(id)s RETURNING stream_key;

-- name: untarget
UPDATE assignments SET target_id = NULL WHERE target_id = ANY (%(ids)s::uuid[]);

-- name: heartbeats
-- Many workers' heartbeats in one statement (store/heartbeats.py batches them): one
-- round trip and one commit for the lot. `running` arrives comma-joined (stream keys
-- cannot contain a comma). No worker appears twice in a batch. A beat renews the
-- lease only with its incarnation's secret; a NULL secret is a caller that
-- authenticated the worker another way (the original protocol).
WITH input AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(incarnations)s::bigint[], %(runnings)s::text[],
                         %(acked_versions)s::bigint[], %(metrics)s::jsonb[],
                         %(draining)s::boolean[], %(ttls)s::float8[],
                         %(secret_hashes)s::bytea[])
           AS t(id, incarnation, running, acked_version, metrics, draining, ttl, secret_hash)
), prev AS (
    -- Rows locked in one order, so concurrent batches cannot deadlock each other.
    SELECT w.id, w.incarnation, w.status, w.running, w.secret_hash
      FROM workers w JOIN input i ON i.id = w.id
     ORDER BY w.id
       FOR UPDATE OF w
), upd AS (
    UPDATE workers w
       SET last_heartbeat = now(),
           lease_expires_at = now() + make_interval(secs => i.ttl),
           running = string_to_array(i.running, ','),
           acked_version = i.acked_version,
           metrics = i.metrics,
           status = CASE WHEN i.draining THEN 'draining' ELSE w.status END
      FROM prev JOIN input i ON i.id = prev.id
     WHERE w.id = prev.id AND prev.incarnation = i.incarnation
       AND (i.secret_hash IS NULL OR prev.secret_hash = i.secret_hash)
       -- Live until a reconcile pass expired it, even if its lease ran out meanwhile:
       -- nothing moved off the worker yet, and the heartbeat may only be late because
       -- this server was slow to read it (I9).
       AND prev.status IN ('active', 'draining')
    RETURNING w.id, w.lease_expires_at, w.status
), generation AS (
    -- A beat that starts a drain changes what placement must consider: the generation
    -- moves in this same transaction. Read after `upd`, so the cluster row is locked
    -- after the worker rows (the order every change takes); no row, no lock, otherwise.
    UPDATE cluster SET generation = generation + 1
     WHERE EXISTS (SELECT 1 FROM upd JOIN prev ON prev.id = upd.id
                    WHERE upd.status = 'draining' AND prev.status <> 'draining')
)
SELECT prev.id, prev.incarnation, prev.status AS previous_status,
       coalesce(i.secret_hash IS NULL OR prev.secret_hash = i.secret_hash, false) AS secret_ok,
       prev.running IS DISTINCT FROM string_to_array(i.running, ',') AS running_changed,
       -- The version in this statement's snapshot, which the assignments below are read
       -- from. Not the updated row's: when this statement waited for the row lock of a
       -- reconcile pass, the update sees the row that pass committed, and would pair its
       -- newer version with the older set (a worker long-polling on that version would
       -- then miss the change).
       (SELECT v.version FROM workers v WHERE v.id = upd.id) AS version,
       upd.lease_expires_at, upd.status,
       -- As text: the server passes it on without parsing it.
       coalesce((SELECT json_agg(json_build_object('stream', a.stream_key, 'url', s.url,
                                                   'weight', s.weight, 'token', a.token)
                                 ORDER BY a.stream_key)
                   FROM assignments a JOIN streams s ON s.key = a.stream_key
                  WHERE a.worker_id = upd.id AND a.state = 'granted'), '[]'::json)::text
       AS assignments
  FROM prev JOIN input i ON i.id = prev.id LEFT JOIN upd ON upd.id = prev.id;

-- name: desired
SELECT w.version, w.lease_expires_at, w.status, w.incarnation,
       coalesce((SELECT json_agg(json_build_object('stream', a.stream_key, 'url', s.url,
                                                   'weight', s.weight, 'token', a.token)
                                 ORDER BY a.stream_key)
                   FROM assignments a JOIN streams s ON s.key = a.stream_key
                  WHERE a.worker_id = w.id AND a.state = 'granted'), '[]'::json)::text
       AS assignments -- as text: passed on to the worker without parsing
  FROM workers w WHERE w.id = %(id)s;

-- name: worker_version
SELECT version FROM workers WHERE id = %(id)s;

-- name: set_draining
UPDATE workers SET status = 'draining'
 WHERE id = %(id)s AND status IN ('active', 'draining')
RETURNING id;

-- name: worker_status
SELECT id, name, status, (SELECT count(*) FROM assignments a WHERE a.worker_id = w.id) AS owned
  FROM workers w WHERE id = %(id)s FOR UPDATE;

-- name: retire_worker
UPDATE workers SET status = 'left', lease_expires_at = now(), running = '{}', version = version + 1
 WHERE id = %(id)s;

-- name: list_live_workers
-- One page of live workers in name order after the cursor, from the workers_live_name
-- index (the literal status list lets the planner use it whatever the parameters), with
-- the load of this page's workers only.
SELECT w.id, w.name, w.status, w.incarnation, w.capacity, w.labels, w.address,
       w.last_heartbeat, w.lease_expires_at, w.kind, w.generation,
       coalesce(l.load, 0)::int AS load, coalesce(l.streams, 0)::int AS streams,
       -- What an instance of the original protocol holds stays there while it lives; JSON
       -- (read as bytes, parsed off the event loop: store/rows.py), as it may be thousands.
       CASE WHEN w.kind = 'original' THEN coalesce(to_json(l.keys), '[]') END AS pinned
  FROM (SELECT * FROM workers
         WHERE status IN ('active', 'draining') AND name > %(after)s
           AND (%(status)s::text IS NULL OR status = %(status)s)
         ORDER BY name LIMIT %(limit)s) w
  LEFT JOIN LATERAL (SELECT sum(s.weight) AS load, count(*) AS streams,
                            array_agg(a.stream_key ORDER BY a.stream_key) AS keys
                       FROM assignments a LEFT JOIN streams s ON s.key = a.stream_key
                      WHERE a.worker_id = w.id) l ON true
 ORDER BY w.name;

-- name: list_workers
-- One page of workers of any of `statuses` in name order after the cursor (the name
-- index); departed workers are bounded by retention (core/retention.py).
SELECT w.id, w.name, w.status, w.incarnation, w.capacity, w.labels, w.address,
       w.last_heartbeat, w.lease_expires_at, w.kind, w.generation,
       coalesce(l.load, 0)::int AS load, coalesce(l.streams, 0)::int AS streams,
       -- What an instance of the original protocol holds stays there while it lives; JSON
       -- (read as bytes, parsed off the event loop: store/rows.py), as it may be thousands.
       CASE WHEN w.kind = 'original' THEN coalesce(to_json(l.keys), '[]') END AS pinned
  FROM (SELECT * FROM workers
         WHERE status = ANY (%(statuses)s::text[]) AND name > %(after)s
         ORDER BY name LIMIT %(limit)s) w
  LEFT JOIN LATERAL (SELECT sum(s.weight) AS load, count(*) AS streams,
                            array_agg(a.stream_key ORDER BY a.stream_key) AS keys
                       FROM assignments a LEFT JOIN streams s ON s.key = a.stream_key
                      WHERE a.worker_id = w.id) l ON true
 ORDER BY w.name;

-- name: get_worker
-- One worker by name or by id, whatever its status.
SELECT w.id, w.name, w.status, w.incarnation, w.capacity, w.labels, w.address,
       w.last_heartbeat, w.lease_expires_at, w.kind, w.generation,
       coalesce(l.load, 0)::int AS load, coalesce(l.streams, 0)::int AS streams,
       -- What an instance of the original protocol holds stays there while it lives; JSON
       -- (read as bytes, parsed off the event loop: store/rows.py), as it may be thousands.
       CASE WHEN w.kind = 'original' THEN coalesce(to_json(l.keys), '[]') END AS pinned
  FROM workers w
  LEFT JOIN LATERAL (SELECT sum(s.weight) AS load, count(*) AS streams,
                            array_agg(a.stream_key ORDER BY a.stream_key) AS keys
                       FROM assignments a LEFT JOIN streams s ON s.key = a.stream_key
                      WHERE a.worker_id = w.id) l ON true
 WHERE (%(name)s::text IS NOT NULL AND w.name = %(name)s)
    OR (%(id)s::uuid IS NOT NULL AND w.id = %(id)s::uuid);

-- name: bump_versions
UPDATE workers SET version = version + 1 WHERE id = ANY (%(ids)s::uuid[]);

-- name: notify
SELECT pg_notify('streamorch_assignments', %(payload)s);

-- name: insert_events
-- Binary arrays, ids and JSON as text (see bulk_upsert_streams). Each event keeps its
-- worker's name, which outlives the worker row (retention forgets departed workers);
-- ids follow the order given.
INSERT INTO events (kind, stream_key, worker_id, worker_name, reason, details)
SELECT t.k, t.s, t.w::uuid, wk.name, t.r, t.d::jsonb
  FROM unnest(%(kinds)b::text[], %(streams)b::text[], %(workers)b::text[],
              %(reasons)b::text[], %(details)b::text[]) WITH ORDINALITY AS t(k, s, w, r, d, n)
  LEFT JOIN workers wk ON wk.id = t.w::uuid
 ORDER BY t.n;

-- name: list_events
-- Oldest first after `since`. Events written before migration 0008 carry no name: it
-- comes from the worker row while there is one (and so do the kind and generation).
SELECT e.id, e.at, e.kind, e.stream_key, e.worker_id,
       coalesce(e.worker_name, w.name) AS worker_name, e.reason, e.details,
       w.kind AS worker_kind, w.generation AS worker_generation
  FROM events e LEFT JOIN workers w ON w.id = e.worker_id
 WHERE e.id > %(since)s
   AND (%(stream)s::text IS NULL OR e.stream_key = %(stream)s)
 ORDER BY e.id
 LIMIT %(limit)s;

-- name: list_newest_events
-- The same rows, newest first (`streamorch events` shows the latest), below `before`
-- when paging back.
SELECT e.id, e.at, e.kind, e.stream_key, e.worker_id,
       coalesce(e.worker_name, w.name) AS worker_name, e.reason, e.details,
       w.kind AS worker_kind, w.generation AS worker_generation
  FROM events e LEFT JOIN workers w ON w.id = e.worker_id
 WHERE e.id > %(since)s AND e.id < %(before)s
   AND (%(stream)s::text IS NULL OR e.stream_key = %(stream)s)
 ORDER BY e.id DESC
 LIMIT %(limit)s;

-- name: reconcile_lock
SELECT pg_try_advisory_xact_lock(%(key)s);

-- name: pass_gap
-- Seconds since the previous pass anywhere in the cluster (NULL for the first). No row
-- lock: passes are already serialised by the advisory lock.
SELECT extract(epoch FROM now() - last_pass_at)::float8 AS gap_s FROM cluster;

-- name: note_pass
-- The last write of a pass. Catalog and fleet changes lock the `cluster` row last
-- (bump_generation, after their assignment and worker rows); a pass that locked it
-- first would invert that order and deadlock with them.
UPDATE cluster SET last_pass_at = now();

-- name: grace_leases
-- Rows locked in id order first, the order the batched heartbeat locks them in: an
-- update that locked them in scan order deadlocked with heartbeats.
WITH live AS (
    SELECT id FROM workers WHERE status IN ('active', 'draining') ORDER BY id FOR UPDATE
)
UPDATE workers w
   SET lease_expires_at = greatest(w.lease_expires_at, now() + make_interval(secs => %(ttl)s))
  FROM live
 WHERE w.id = live.id
RETURNING w.id;

-- name: next_expiry
-- Seconds until the earliest live lease can expire (NULL without live workers): the
-- reconciler wakes then, so a dead worker's streams move as soon as its lease ends
-- rather than up to one interval later. Same terms as expire_workers.
SELECT extract(epoch FROM min(lease_expires_at) - clock_timestamp())::float8 + %(grace)s
  FROM workers
 WHERE status IN ('active', 'draining') AND NOT (id = ANY (%(alive)s::uuid[]));

-- name: expire_workers
-- Leases that ended more than `grace` seconds ago (how late this server recently ran:
-- a heartbeat may have waited that long to be read), of workers with no heartbeat
-- waiting in this server (`alive`). Only the worker's silence expires it (I9).
UPDATE workers SET status = 'expired', version = version + 1
 WHERE status IN ('active', 'draining')
   AND lease_expires_at < now() - make_interval(secs => %(grace)s)
   AND NOT (id = ANY (%(alive)s::uuid[]))
RETURNING id;

-- name: release_workers
DELETE FROM assignments WHERE worker_id = ANY (%(ids)s::uuid[])
RETURNING stream_key, worker_id;

-- name: finish_moves
-- The owner reported a running set without the stream, in a report that reflects
-- the revoke (it names an applied desired-set version at or after the one that
-- dropped the stream): it stopped, so the stream may now be granted elsewhere (I1).
-- A report naming no version proves nothing (I9): it may have been written before
-- the worker acted on the answer that granted the stream. Such a move finishes only
-- when the owner's lease expires.
DELETE FROM assignments a USING workers w
 WHERE a.worker_id = w.id AND a.state = 'revoking'
   AND NOT (a.stream_key = ANY (w.running))
   AND w.acked_version >= a.revoke_version
RETURNING a.stream_key, a.worker_id, a.target_id, a.reason;

-- name: drained_workers
-- Draining workers among these that own nothing any more: their drain is complete.
SELECT w.id FROM workers w
 WHERE w.id = ANY (%(ids)s::uuid[]) AND w.status = 'draining'
   AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.worker_id = w.id);

-- name: stamp_revokes
-- Run after the version bump of the same transaction: the owner's version now is the
-- first one whose desired set lacks these streams.
UPDATE assignments a SET revoke_version = w.version
  FROM workers w
 WHERE a.worker_id = w.id AND a.state = 'revoking' AND a.stream_key = ANY (%(keys)s::text[]);

-- name: recent_joins
-- Seconds since each live worker registered, for those within `horizon` seconds: how
-- a fleet is assembling (domain/settle.py).
SELECT extract(epoch FROM now() - registered_at)::float8
  FROM workers
 WHERE status IN ('active', 'draining')
   AND registered_at > now() - make_interval(secs => %(horizon)s);

-- name: live_workers
-- Ids as text here and below: placement works with strings, and building uuid.UUID
-- objects only to str() them again is most of a snapshot's cost at 100,000 streams.
SELECT w.id::text, w.name, w.capacity, w.labels, w.status, w.kind = 'original' AS pinned
  FROM workers w WHERE w.status IN ('active', 'draining');

-- name: placement_rows
-- One row per stream placement may act on (enabled, or assigned), with its assignment
-- if any; a deleted stream whose owner has not stopped it yet has an assignment and no
-- stream (weight NULL). One pass over both tables: at 100,000 streams, fetching rows is
-- most of a snapshot's cost. An empty `requires` comes back as NULL: spares parsing
-- '{}' once per stream.
SELECT coalesce(s.key, a.stream_key), s.weight, nullif(s.requires, '{}'::jsonb), s.enabled,
       a.worker_id::text, a.state, a.target_id::text
  FROM streams s
  FULL JOIN assignments a ON a.stream_key = s.key
 WHERE s.enabled OR a.stream_key IS NOT NULL;

-- name: insert_grants
INSERT INTO assignments (stream_key, worker_id, token, reason)
SELECT k, w, nextval('fencing_tokens'), r
  FROM unnest(%(keys)b::text[], %(workers)b::text[]::uuid[], %(reasons)b::text[]) AS t(k, w, r)
RETURNING stream_key, worker_id::text, token; -- text: no uuid.UUID per grant

-- name: apply_revokes
-- revoked_at is the moment of the revoke, not the pass's start (now()): a heartbeat
-- that began while the pass ran must not count as a report made after the revoke.
UPDATE assignments a
   SET state = 'revoking', revoked_at = clock_timestamp(), target_id = t.target, reason = t.reason
  FROM unnest(%(keys)b::text[], %(targets)b::text[]::uuid[], %(reasons)b::text[])
       AS t(k, target, reason)
 WHERE a.stream_key = t.k AND a.state = 'granted'
RETURNING a.stream_key, a.worker_id, a.target_id, a.reason;

-- name: status_counts
SELECT
  (SELECT count(*) FROM streams WHERE enabled) AS enabled,
  (SELECT count(*) FROM streams WHERE NOT enabled) AS disabled,
  (SELECT count(*) FROM assignments WHERE state = 'granted') AS assigned,
  (SELECT count(*) FROM assignments WHERE state = 'revoking') AS moving,
  (SELECT count(*) FROM streams s WHERE s.enabled
      AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.stream_key = s.key)) AS unassigned;

-- name: worker_loads
SELECT w.id, w.name, w.status, w.capacity, coalesce(sum(s.weight), 0)::int AS load
  FROM workers w
  LEFT JOIN assignments a ON a.worker_id = w.id
  LEFT JOIN streams s ON s.key = a.stream_key
 WHERE w.status IN ('active', 'draining')
 GROUP BY w.id;

-- name: worker_counts
-- From the partial indexes: live workers without reading departed ones, and departed
-- ones (bounded by retention) without reading the live.
SELECT status, count(*)::int AS n FROM workers
 WHERE status IN ('active', 'draining') GROUP BY status
UNION ALL
SELECT status, count(*)::int AS n FROM workers
 WHERE status IN ('expired', 'left') GROUP BY status;
