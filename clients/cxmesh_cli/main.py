"""`cxmesh`: the command line of cxmesh."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cxmesh_cli.lists import lists_app, suppression_app
from cxmesh_server.runtime.devkeys import ensure_dev_key

app = typer.Typer(help="cxmesh command line.", no_args_is_help=True)
app.add_typer(lists_app, name="lists")
app.add_typer(suppression_app, name="suppression")


@app.callback()
def main() -> None:
    """cxmesh command line."""


@app.command("dev-token")
def dev_token(
    tenant: Annotated[str, typer.Option(help="the tenant the token acts for")] = "demo",
    role: Annotated[list[str], typer.Option(help="a role; repeat for several")] = ["admin"],  # noqa: B006
    ttl: Annotated[int, typer.Option(help="lifetime in seconds")] = 12 * 3600,
    state_dir: Annotated[
        Path, typer.Option(envvar="CXMESH_STATE_DIR", help="where `make run` keeps its state")
    ] = Path(".cxmesh"),
) -> None:
    """Prints a development bearer token signed by the local development key."""
    key, _ = ensure_dev_key(state_dir / "keys")
    typer.echo(
        key.mint(
            tenant=tenant, roles=role, ttl_seconds=ttl, subject=os.environ.get("USER", "developer")
        )
    )


if __name__ == "__main__":
    app()
