-- Snapshot of the whole schema after every migration in migrations/.
-- tests/migration checks that the two stay identical.

CREATE TABLE schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE cluster (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    cluster_id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    generation bigint NOT NULL DEFAULT 0,
    last_pass_at timestamptz
);

CREATE TABLE streams (
    key        text PRIMARY KEY CHECK (key ~ '^[A-Za-z0-9._:/-]{1,200}$'),
    url        text NOT NULL,
    weight     integer NOT NULL DEFAULT 1 CHECK (weight >= 1),
    labels     jsonb NOT NULL DEFAULT '{}',
    requires   jsonb NOT NULL DEFAULT '{}',
    enabled    boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE workers (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name             text NOT NULL UNIQUE,
    incarnation      bigint NOT NULL DEFAULT 1,
    capacity         integer NOT NULL CHECK (capacity >= 1),
    labels           jsonb NOT NULL DEFAULT '{}',
    address          text,
    status           text NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'draining', 'expired', 'left')),
    running          text[] NOT NULL DEFAULT '{}',
    metrics          jsonb NOT NULL DEFAULT '{}',
    version          bigint NOT NULL DEFAULT 1,
    registered_at    timestamptz NOT NULL DEFAULT now(),
    last_heartbeat   timestamptz NOT NULL DEFAULT now(),
    lease_expires_at timestamptz NOT NULL,
    acked_version    bigint,
    kind             text NOT NULL DEFAULT 'sdk' CHECK (kind IN ('sdk', 'original')),
    generation       text,
    -- SHA-256 of the current incarnation's secret (never the secret itself).
    secret_hash      bytea
);

CREATE INDEX workers_live_lease ON workers (lease_expires_at) WHERE status IN ('active', 'draining');
CREATE INDEX workers_live_name ON workers (name, status) WHERE status IN ('active', 'draining');
CREATE INDEX workers_departed ON workers (lease_expires_at, status) WHERE status IN ('expired', 'left');

CREATE SEQUENCE fencing_tokens;

CREATE TABLE assignments (
    stream_key text PRIMARY KEY,
    worker_id  uuid NOT NULL REFERENCES workers (id),
    token      bigint NOT NULL,
    state      text NOT NULL DEFAULT 'granted' CHECK (state IN ('granted', 'revoking')),
    target_id  uuid REFERENCES workers (id),
    reason     text NOT NULL,
    since      timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    revoke_version bigint
);

CREATE INDEX assignments_worker ON assignments (worker_id, state);
CREATE INDEX assignments_revoking ON assignments (worker_id) WHERE state = 'revoking';

CREATE TABLE events (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    kind       text NOT NULL,
    stream_key text,
    worker_id  uuid,
    reason     text,
    details    jsonb NOT NULL DEFAULT '{}',
    worker_name text
);

CREATE INDEX events_stream ON events (stream_key, id) WHERE stream_key IS NOT NULL;
CREATE INDEX events_unnamed ON events (worker_id) WHERE worker_name IS NULL AND worker_id IS NOT NULL;

CREATE TABLE compat_handouts (
    worker_id  uuid NOT NULL REFERENCES workers (id),
    stream_key text NOT NULL,
    handed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (worker_id, stream_key)
);
