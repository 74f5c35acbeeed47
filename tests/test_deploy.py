"""deploy/ as operators use it: the settings file lists every setting, and the systemd units pass
``systemd-analyze verify`` and run real frontdesk commands."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from frontdesk.settings import Settings

DEPLOY = Path(__file__).parents[1] / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def test_the_env_example_names_every_setting_and_nothing_else() -> None:
    named = re.findall(r"^(?:# )?(FRONTDESK_[A-Z0-9_]+)=", (DEPLOY / "compose" / ".env.example")
                       .read_text(), re.MULTILINE)  # fmt: skip
    settings = [f"FRONTDESK_{name.upper()}" for name in Settings.model_fields]
    assert sorted(named) == sorted(settings)  # each once


def test_the_env_example_read_as_settings_gives_the_defaults() -> None:
    """Its uncommented lines are the tokens to fill in, empty: read as a .env file they leave
    every other setting at its default, so the file cannot set a wrong value by accident."""
    example = (DEPLOY / "compose" / ".env.example").read_text()
    values = dict(
        line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#")
    )
    assert values and all(value == "" for value in values.values())


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_the_systemd_unit_passes_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    """Verified with ExecStart pointed at this machine's frontdesk (verify checks that the
    command exists); any warning about a directive fails it too."""
    frontdesk = shutil.which("frontdesk", path=str(Path(sys.executable).parent))
    assert frontdesk is not None
    text = unit.read_text()
    [command] = re.findall(r"^ExecStart=/opt/frontdesk/bin/frontdesk (\S+)$", text, re.MULTILINE)
    here = tmp_path / unit.name.replace("@.", "@1.")
    here.write_text(text.replace("/opt/frontdesk/bin/frontdesk", frontdesk))
    verified = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(here)], capture_output=True, text=True
    )
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr
    helped = subprocess.run([frontdesk, command, "--help"], capture_output=True, text=True)
    assert helped.returncode == 0, helped.stderr  # a real frontdesk command
    for hardening in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes",
                      "Restart=on-failure", "Type=exec"):  # fmt: skip
        assert f"\n{hardening}\n" in text
