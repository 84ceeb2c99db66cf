"""The ``airgap`` command's entry point: Ctrl-C (or SIGTERM) while its modules load, a second or
so before the command's own handling starts, ends it as an interrupt does later (exit code 130,
one line on stderr), not with a Python traceback through whatever was being imported."""

from __future__ import annotations

import os
import signal
from types import FrameType


def _early(signum: int, frame: FrameType | None) -> None:
    os.write(2, b"airgap: error: interrupted\n")
    os._exit(130)  # nothing has started yet that would need undoing


def main() -> None:
    signal.signal(signal.SIGINT, _early)
    signal.signal(signal.SIGTERM, _early)
    from airgap.client.cli import main as run  # installs the command's own handlers

    run()
