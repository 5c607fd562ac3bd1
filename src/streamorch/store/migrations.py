"""Schema migrations: plain SQL files applied in order, exactly once.

Files are `store/sql/migrations/NNNN_description.sql`. Each is applied in its own
transaction together with its row in `schema_migrations`, so a crash mid-way
leaves the schema at the previous version, never half-migrated. A session-level
advisory lock serialises concurrent starts: replicas started together wait for
the first one and then find nothing to do. A migration file edited after it was
applied is refused (checksum mismatch) rather than silently skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from streamorch.domain.errors import MigrationError

log = logging.getLogger(__name__)

# Arbitrary but fixed: the advisory lock key that serialises migrations.
MIGRATION_LOCK_KEY = 0x5354524D  # "STRM"

_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    folder = resources.files("streamorch.store") / "sql" / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _FILENAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number: {versions}")
    return found


def expected_version() -> int:
    migrations = available()
    return migrations[-1].version if migrations else 0


async def current_version(conn: psycopg.AsyncConnection) -> int:
    """The highest applied version; 0 on an empty database."""
    cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return 0
    cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def migrate(conn: psycopg.AsyncConnection, lock_timeout_s: float = 60.0) -> list[Migration]:
    """Apply every pending migration; returns those applied by this call."""
    if not conn.autocommit:
        raise MigrationError(
            "migrate() needs an autocommit connection (it opens its own transactions)"
        )
    await conn.execute(f"SET lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
    try:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    except psycopg.errors.LockNotAvailable as exc:
        raise MigrationError(
            f"another process held the migration lock for more than {lock_timeout_s:g}s"
        ) from exc
    try:
        await conn.execute(_CREATE_TABLE)
        cur = await conn.execute("SELECT version, checksum FROM schema_migrations")
        applied = {int(v): c for v, c in await cur.fetchall()}
        unknown = sorted(set(applied) - {m.version for m in available()})
        if unknown:
            raise MigrationError(
                f"the database has migrations this version does not know: {unknown}; "
                "run a newer orchestrator version"
            )
        done: list[Migration] = []
        for migration in available():
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} changed after it "
                        "was applied; add a new migration instead of editing an applied one"
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
            except psycopg.Error as exc:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} failed and was rolled "
                    f"back: {exc}"
                ) from exc
            log.info(
                "applied migration %04d_%s",
                migration.version,
                migration.name,
                extra={"action": "migration_applied", "version": migration.version},
            )
            done.append(migration)
        return done
    finally:
        # On a broken connection the server already released the lock; keep the
        # original error rather than one about the clean-up.
        with contextlib.suppress(psycopg.Error):
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
            await conn.execute("RESET lock_timeout")
