"""The public surface holds: every name a package lists in ``__all__`` exists, so
``from frontdesk.<package> import *`` works, and the package ships its types (``py.typed``)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import frontdesk


def _packages() -> list[str]:
    found = ["frontdesk"]
    for info in pkgutil.walk_packages(frontdesk.__path__, "frontdesk."):
        if info.ispkg and ".migrations" not in info.name:
            found.append(info.name)
    return found


def test_every_package_is_found() -> None:
    names = _packages()
    for expected in ("frontdesk.bots", "frontdesk.engine", "frontdesk.storage"):
        assert expected in names


@pytest.mark.parametrize("name", _packages())
def test_every_name_in_all_exists(name: str) -> None:
    module = importlib.import_module(name)
    listed = getattr(module, "__all__", [])
    missing = [n for n in listed if not hasattr(module, n)]
    assert missing == [], f"{name}.__all__ lists what it does not define"
    namespace: dict[str, object] = {}
    exec(f"from {name} import *", namespace)  # what a user's star import does


def test_the_package_ships_its_types() -> None:
    assert (Path(frontdesk.__file__).parent / "py.typed").is_file()
