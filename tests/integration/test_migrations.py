"""Versioned migrations against a real Postgres."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from cxmesh_server.iam.bootstrap import PROCESS as IAM
from cxmesh_server.runtime.migrations import migrate
from cxmesh_server.stack.datastores import EmbeddedPostgres


async def test_migrations_applied_twice_are_a_no_op(
    postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_things.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);")
    (folder / "0002_more.sql").write_text("ALTER TABLE things ADD COLUMN label text;")
    assert await migrate(postgres.dsn, "twice", folder) == ["0001_things.sql", "0002_more.sql"]
    assert await migrate(postgres.dsn, "twice", folder) == []
    connection = await asyncpg.connect(postgres.dsn)
    try:
        assert await connection.fetchval("SELECT count(*) FROM twice.schema_migrations") == 2
    finally:
        await connection.close()


async def test_a_migration_changed_after_it_was_applied_is_refused(
    postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_things.sql").write_text("CREATE TABLE things (id int);")
    await migrate(postgres.dsn, "edited", folder)
    (folder / "0001_things.sql").write_text("CREATE TABLE things (id bigint);")
    with pytest.raises(RuntimeError, match="changed after it was applied"):
        await migrate(postgres.dsn, "edited", folder)


async def test_a_failing_migration_leaves_nothing_half_applied(
    postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_broken.sql").write_text(
        "CREATE TABLE half (id int); SELECT no_such_function();"
    )
    with pytest.raises(asyncpg.PostgresError):
        await migrate(postgres.dsn, "broken", folder)
    connection = await asyncpg.connect(postgres.dsn)
    try:
        assert await connection.fetchval("SELECT to_regclass('broken.half')") is None
        assert await connection.fetchval("SELECT count(*) FROM broken.schema_migrations") == 0
    finally:
        await connection.close()


async def test_service_migrations_apply_to_a_fresh_database_and_again(
    postgres: EmbeddedPostgres,
) -> None:
    for schema, folder in IAM.migrations:
        await migrate(postgres.dsn, schema, folder)
        assert await migrate(postgres.dsn, schema, folder) == []


async def test_every_table_with_a_tenant_id_gets_the_tenant_policy(
    postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_notes.sql").write_text(
        "CREATE TABLE notes (tenant_id text NOT NULL, body text);"
        "CREATE TABLE shared_lookup (code text PRIMARY KEY);"
    )
    await migrate(postgres.dsn, "forgetful", folder)
    connection = await asyncpg.connect(postgres.dsn)
    try:
        rows = await connection.fetch(
            """
            SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
                   EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid) AS policy
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'forgetful' AND c.relkind = 'r' AND c.relname <> 'schema_migrations'
            ORDER BY c.relname
            """
        )
    finally:
        await connection.close()
    assert [tuple(r) for r in rows] == [
        ("notes", True, True, True),
        ("shared_lookup", False, False, False),
    ]
