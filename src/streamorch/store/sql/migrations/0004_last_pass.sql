-- When the last reconcile pass ran, cluster-wide. A pass that finds it much older
-- than a lease knows the control plane was out (PostgreSQL down, every server
-- stopped): workers could not heartbeat, so their leases are extended once
-- instead of expiring the whole fleet at once.
ALTER TABLE cluster ADD COLUMN last_pass_at timestamptz;
