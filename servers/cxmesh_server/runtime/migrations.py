"""Versioned SQL migrations, one schema per service.

Files are `NNNN_description.sql` in the service's `migrations/` folder. Each is applied once,
in order, in its own transaction, under an advisory lock so that replicas starting together
apply it once. A file changed after it was applied is an error, never silently skipped.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from cxmesh_server.runtime.postgres import APP_ROLE

_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(folder: Path) -> list[Migration]:
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise ValueError(f"migration file name must be NNNN_name.sql: {path.name}")
        migrations.append(Migration(int(match.group(1)), path.name, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {folder}")
    return migrations


async def migrate(dsn: str, schema: str, folder: Path) -> list[str]:
    """Applies the pending migrations of one schema; returns the names applied."""
    connection = await asyncpg.connect(dsn)
    try:
        lock_id = int.from_bytes(
            hashlib.sha256(f"cxmesh-migrate:{schema}".encode()).digest()[:8], "big", signed=True
        )
        await connection.execute("SELECT pg_advisory_lock($1)", lock_id)
        try:
            return await _apply(connection, schema, load_migrations(folder))
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", lock_id)
    finally:
        await connection.close()


async def _apply(
    connection: asyncpg.Connection, schema: str, migrations: list[Migration]
) -> list[str]:
    ident = _identifier(schema)
    await _ensure_app_role(connection)
    await connection.execute(
        f"""
        CREATE SCHEMA IF NOT EXISTS {ident};
        GRANT USAGE ON SCHEMA {ident} TO {APP_ROLE};
        CREATE TABLE IF NOT EXISTS {ident}.schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        );
        """
    )
    applied = {
        row["version"]: row["checksum"]
        for row in await connection.fetch(
            f"SELECT version, checksum FROM {ident}.schema_migrations"
        )
    }
    done = []
    for migration in migrations:
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                raise RuntimeError(
                    f"{schema} migration {migration.name} changed after it was applied"
                )
            continue
        async with connection.transaction():
            await connection.execute(f"SET LOCAL search_path TO {ident}")
            await connection.execute(migration.sql)
            await connection.execute(_TENANT_ISOLATION)
            await connection.execute(
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {ident} TO {APP_ROLE};"
                f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {ident} TO {APP_ROLE};"
            )
            await connection.execute(
                f"INSERT INTO {ident}.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        done.append(migration.name)
    return done


# Every table of the schema with a tenant_id column gets row-level security, forced for its
# owner too, with the tenant policy: a new table cannot be left open to every tenant.
# (Older migrations set the same policy themselves; tables that have it are skipped.)
_TENANT_ISOLATION = """
DO $$
DECLARE t regclass;
BEGIN
    FOR t IN
        SELECT c.oid::regclass FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
        WHERE c.relkind IN ('r', 'p')
          AND NOT EXISTS (SELECT 1 FROM pg_policy p
                          WHERE p.polrelid = c.oid AND p.polname = 'tenant_isolation')
    LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %s '
            'USING (tenant_id = current_setting(''cxmesh.tenant'', true)) '
            'WITH CHECK (tenant_id = current_setting(''cxmesh.tenant'', true))', t);
    END LOOP;
END $$;
"""


async def _ensure_app_role(connection: asyncpg.Connection) -> None:
    # Roles are cluster-wide; two schemas migrating at once may race to create it.
    await connection.execute(
        f"""
        DO $$ BEGIN
            CREATE ROLE {APP_ROLE} NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END $$;
        DO $$ BEGIN
            EXECUTE format('GRANT {APP_ROLE} TO %I', current_user);
        EXCEPTION WHEN others THEN NULL;
        END $$;
        """
    )


def _identifier(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"bad schema name {name!r}")
    return name
