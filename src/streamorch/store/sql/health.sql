-- Queries of health, doctor and start-up (store/diagnostics.py), by `-- name: …` header.

-- name: schema_version
SELECT CASE WHEN to_regclass('schema_migrations') IS NULL THEN 0
            ELSE (SELECT coalesce(max(version), 0) FROM schema_migrations) END;

-- name: cluster_pass
-- When any replica last ran a reconcile pass, and how long ago by the server's clock.
SELECT last_pass_at, extract(epoch FROM now() - last_pass_at)::float8 FROM cluster;

-- name: probe_write
-- The operations test: a write the caller rolls back, then a read of it.
INSERT INTO events (kind, reason) VALUES ('health_probe', 'probe') RETURNING id;

-- name: probe_read
SELECT kind FROM events WHERE id = %(id)s;

-- name: moves_in_flight
SELECT a.stream_key, w.name AS from_worker, t.name AS to_worker, a.reason, a.revoked_at
  FROM assignments a
  JOIN workers w ON w.id = a.worker_id
  LEFT JOIN workers t ON t.id = a.target_id
 WHERE a.state = 'revoking'
 ORDER BY a.revoked_at NULLS LAST
 LIMIT %(limit)s;

-- name: last_failovers
-- Newest lease expirations and control-plane grace extensions, newest first.
SELECT e.id, e.at, e.kind, w.name AS worker, e.reason, e.details
  FROM events e LEFT JOIN workers w ON w.id = e.worker_id
 WHERE e.kind IN ('worker_expired', 'leases_extended')
 ORDER BY e.id DESC
 LIMIT %(limit)s;

-- name: workers_overview
SELECT w.name, w.status, w.capacity, w.last_heartbeat, w.lease_expires_at,
       count(a.stream_key)::int AS streams, coalesce(sum(s.weight), 0)::int AS load
  FROM workers w
  LEFT JOIN assignments a ON a.worker_id = w.id
  LEFT JOIN streams s ON s.key = a.stream_key
 WHERE w.status IN ('active', 'draining')
 GROUP BY w.id
 ORDER BY w.name
 LIMIT %(limit)s;
