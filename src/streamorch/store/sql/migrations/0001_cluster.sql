-- The identity of this orchestrator cluster: one row, created with the schema.
-- Replicas, logs and `streamorch doctor` use it to tell clusters apart.
CREATE TABLE cluster (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    cluster_id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO cluster DEFAULT VALUES;
