-- Read-only queries of the dashboard (api/ui), one per `-- name: <name>` header, loaded
-- by store/dashboard.py. Each is bounded: the dashboard never reads the whole catalog
-- or the whole event log.

-- name: recent_events
-- Newest first. A kind or worker filter has no index of its own: the scan is bounded to
-- the newest %(window)s events (a stream filter uses events_stream and is not bounded).
SELECT e.id, e.at, e.kind, e.stream_key, e.worker_id, w.name AS worker_name, e.reason, e.details
  FROM events e LEFT JOIN workers w ON w.id = e.worker_id
 WHERE e.id > %(after)s
   AND (%(before)s::bigint IS NULL OR e.id < %(before)s)
   AND (%(kind)s::text IS NULL OR e.kind = %(kind)s)
   AND (%(stream)s::text IS NULL OR e.stream_key = %(stream)s)
   AND (%(worker)s::uuid IS NULL OR e.worker_id = %(worker)s)
   AND (%(stream)s::text IS NOT NULL
        OR e.id > (SELECT coalesce(max(id), 0) FROM events) - %(window)s)
 ORDER BY e.id DESC
 LIMIT %(limit)s;

-- name: activity
-- Events per minute over the last hour, for the overview's chart; bounded like
-- recent_events. `minute` counts minutes back from now (0 = the current one).
SELECT floor(extract(epoch FROM now() - at) / 60)::int AS minute,
       count(*) FILTER (WHERE kind = 'assigned')::int AS assigned,
       count(*) FILTER (WHERE kind = 'moved')::int AS moved,
       count(*) FILTER (WHERE kind = 'revoked')::int AS revoked,
       count(*) FILTER (WHERE kind = 'worker_expired')::int AS expired
  FROM events
 WHERE id > (SELECT coalesce(max(id), 0) FROM events) - %(window)s
   AND at > now() - interval '1 hour'
 GROUP BY 1;

-- name: live_instances
-- Live workers that speak the original instance protocol (core/compat.py labels them).
SELECT count(*)::int FROM workers
 WHERE status IN ('active', 'draining') AND labels @> %(labels)s;

-- name: worker
SELECT w.id, w.name, w.status, w.incarnation, w.capacity, w.labels, w.address,
       w.registered_at, w.last_heartbeat, w.lease_expires_at, w.metrics, w.version,
       coalesce(sum(s.weight), 0)::int AS load, count(a.stream_key)::int AS streams
  FROM workers w
  LEFT JOIN assignments a ON a.worker_id = w.id
  LEFT JOIN streams s ON s.key = a.stream_key
 WHERE w.id = %(id)s
 GROUP BY w.id;

-- name: worker_streams
-- One worker's streams in key order, after a cursor: assignments_worker finds them.
SELECT a.stream_key AS key, s.weight, s.enabled, a.token, a.state, a.since, a.reason,
       t.name AS target_name
  FROM assignments a
  LEFT JOIN streams s ON s.key = a.stream_key
  LEFT JOIN workers t ON t.id = a.target_id
 WHERE a.worker_id = %(id)s AND a.stream_key > %(after)s
 ORDER BY a.stream_key
 LIMIT %(limit)s;
