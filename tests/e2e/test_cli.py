"""The command line against the running mesh."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cxmesh_cli.main import app
from cxmesh_server.stack.mesh import Mesh
from tests.e2e.lists_helpers import Lists


def test_lists_import_shows_progress_and_a_summary(
    lists: Lists, mesh: Mesh, tmp_path: Path
) -> None:
    leads = tmp_path / "leads.csv"
    leads.write_text("client_id,phone\nA,(415) 555-0101\nB,12\nC,(212) 555-0102\n")
    result = CliRunner().invoke(
        app,
        [
            "lists",
            "import",
            str(leads),
            "--list",
            "CLI leads",
            "--edge",
            mesh.edge_url,
            "--token",
            lists.token,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "SUCCEEDED" in result.output
    assert "errors:download" in result.output  # one row was rejected
    (contact_list,) = [c for c in lists.records_lists() if c.display_name == "CLI leads"]
    assert {r.client_id for r in lists.records(contact_list.name)} == {"A", "C"}


def test_lists_import_reports_a_refused_file(lists: Lists, mesh: Mesh, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    result = CliRunner().invoke(
        app,
        [
            "lists",
            "import",
            str(empty),
            "--list",
            "CLI empty",
            "--edge",
            mesh.edge_url,
            "--token",
            lists.token,
        ],
    )
    assert result.exit_code == 2
    assert "empty" in result.output


def test_suppression_import_loads_a_national_dnc_file(
    lists: Lists, mesh: Mesh, tmp_path: Path
) -> None:
    registry = tmp_path / "dnc.txt"
    registry.write_text("2015550101\n2015550102\nbad\n")
    result = CliRunner().invoke(
        app,
        [
            "suppression",
            "import",
            str(registry),
            "--list",
            "national",
            "--dnc",
            "full",
            "--edge",
            mesh.edge_url,
            "--token",
            lists.token,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "added 2" in result.output and "rejected 1" in result.output
