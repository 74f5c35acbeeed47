"""`frontdesk model export-hf --out DIR`: it replaces only an export of its own, and refuses, in one
line and touching nothing, a folder or file of the user's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from frontdesk.cli import app
from frontdesk.model import MARKER

runner = CliRunner()


@pytest.mark.parametrize("where", ["folder", "cwd", "file"])
def test_export_refuses_a_target_it_did_not_make_and_keeps_its_files(
    tmp_path: Path, where: str
) -> None:
    mine = tmp_path / "models"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own notes")
    target = {"folder": str(mine), "cwd": ".", "file": str(mine / "notes.txt")}[where]
    before = os.getcwd()
    os.chdir(mine)
    try:
        result = runner.invoke(app, ["model", "export-hf", "--out", target])
    finally:
        os.chdir(before)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "did not make" in lines[0] and str(mine) in lines[0]
    assert (mine / "notes.txt").read_text() == "my own notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no .partial left either
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_an_earlier_export_is_found_again_and_not_redone(tmp_path: Path) -> None:
    earlier = tmp_path / "hf"
    earlier.mkdir()
    for name in (MARKER, "config.json", "model.safetensors"):
        (earlier / name).write_text("{}")
    result = runner.invoke(app, ["model", "export-hf", "--out", str(earlier)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(earlier)
    assert (earlier / "model.safetensors").read_text() == "{}"  # cached, not written again
