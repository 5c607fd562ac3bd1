-- Per-worker credentials (docs/decisions/0014-per-worker-credentials.md): each
-- registration gets a random secret; only its SHA-256 digest is kept. Rows registered
-- before this migration have none, so their next worker call is refused and the
-- worker registers again.
ALTER TABLE workers ADD COLUMN secret_hash bytea;
