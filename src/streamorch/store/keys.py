"""Every name the store gives things outside its tables: Redis keys and channels, and the
PostgreSQL notification channel. Nothing else spells them."""

from __future__ import annotations

# PostgreSQL LISTEN/NOTIFY channel announcing workers whose desired set changed
# (payload: their ids, comma-separated). queries.sql's `notify` must use the same name.
NOTIFY_CHANNEL = "streamorch_assignments"

# Redis pub/sub channel carrying the same news across replicas after commit.
REDIS_CHANNEL = "streamorch:assignments"

# The key the Redis health probe writes and reads back (core/health.py names it too
# until it moves to ops; it should import it from here).
HEALTH_PROBE_KEY = "streamorch:health:probe"
