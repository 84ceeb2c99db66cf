"""Every folder of code is a package that the wheel ships (setuptools lists them by hand)."""

from __future__ import annotations

import tomllib

from tests.conftest import ROOT


def test_every_code_folder_is_a_listed_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for top in ("shared", "client", "server"):
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / top).parts
            found.add(".".join(("airgap", top, *parts)))
    assert found == listed
