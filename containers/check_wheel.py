"""Check that the airgap wheel holds every module of the source tree, before it is shipped.

    python containers/check_wheel.py containers/wheelhouse/airgap_ftp-*.whl

The distribution lists its packages by name in pyproject.toml, so a new subpackage (say
``server/ftp/``) works in the editable install that the tests use and is silently left out of
the wheel, and so of the container images. `make wheelhouse` runs this check to make that a
build error instead of an ImportError on the isolated side. It only reads; it changes nothing.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"shared": "airgap/shared", "client": "airgap/client", "server": "airgap/server"}


def expected_members() -> set[str]:
    members = set()
    for folder, package in FOLDERS.items():
        for module in (ROOT / folder).rglob("*.py"):
            members.add(f"{package}/{module.relative_to(ROOT / folder).as_posix()}")
    return members


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: check_wheel.py WHEEL", file=sys.stderr)
        return 2
    with zipfile.ZipFile(argv[0]) as wheel:
        shipped = set(wheel.namelist())
    missing = sorted(expected_members() - shipped)
    stale = sorted(
        name
        for name in shipped
        if name.endswith(".py") and name.startswith("airgap/") and name not in expected_members()
    )
    for name in missing:
        print(f"check_wheel: {name} is in the source but not in the wheel", file=sys.stderr)
    for name in stale:
        print(f"check_wheel: {name} is in the wheel but not in the source", file=sys.stderr)
    if missing or stale:
        print(
            "check_wheel: hint: list every package, subpackages too, in pyproject.toml "
            "[tool.setuptools] packages",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
