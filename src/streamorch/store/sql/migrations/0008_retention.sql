-- Retention (core/retention.py) and bounded lists.
--
-- Events keep the name of their worker, so they still say who it was once a departed
-- worker is forgotten. New events get it when they are written; older ones get it just
-- before their worker is forgotten, found through `events_unnamed` (which only ever
-- holds events written before this migration, and empties as they age out).
ALTER TABLE events ADD COLUMN worker_name text;
CREATE INDEX events_unnamed ON events (worker_id) WHERE worker_name IS NULL AND worker_id IS NOT NULL;

-- Live workers by name: GET /v1/workers pages through them and /v1/status counts them
-- without reading the history of departed ones.
CREATE INDEX workers_live_name ON workers (name, status) WHERE status IN ('active', 'draining');
-- Departed workers by the time they departed (their lease's end): what retention forgets.
CREATE INDEX workers_departed ON workers (lease_expires_at, status) WHERE status IN ('expired', 'left');
