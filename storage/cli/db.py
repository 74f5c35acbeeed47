"""`frontdesk db upgrade`: create or upgrade the schema (Alembic)."""

from __future__ import annotations

import typer

from frontdesk.clitools import out, run, settings

from ..store import Store

db = typer.Typer(help="Manage the database schema.", no_args_is_help=True)


@db.command("upgrade")
def upgrade(ctx: typer.Context) -> None:
    """Create or upgrade the schema to the newest revision (Alembic)."""

    async def go() -> str:
        store = Store(settings(ctx).database_url)
        try:
            return await store.upgrade()
        finally:
            await store.stop()

    revision = run(go())
    out.print(f"database is at revision {revision}")
