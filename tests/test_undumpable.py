"""The CLI keeps its keys and passwords out of core files and away from ptrace."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import spawn_airgap


def test_a_running_command_writes_no_core_file(tmp_path: Path) -> None:
    """Found in review: a SIGQUIT'd fetch left a 28 MB core beside it, holding the identity's
    scalar and AIRGAP_PASSWORD."""
    with socket.socket() as silent:  # accepts, never greets: the command waits on it
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        waiting = spawn_airgap(
            ["ls", "--server", f"ftp://receiver@127.0.0.1:{port}/"],
            env={"AIRGAP_PASSWORD": "not-in-any-core", "XDG_CACHE_HOME": str(tmp_path)},
        )
        try:
            deadline = time.monotonic() + 20
            while _core_limit(waiting.pid) != ["0", "0"]:
                assert time.monotonic() < deadline, _core_limit(waiting.pid)
                time.sleep(0.05)
        finally:
            waiting.kill()
            waiting.communicate()  # and its pipes closed


def _core_limit(pid: int) -> list[str]:
    """The soft and hard limits of a process's core file size, as /proc shows them."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return line.split()[4:6]
    return []


def test_not_dumpable_after_the_call() -> None:
    script = (
        "import ctypes; from airgap.client.undumpable import keep_out_of_dumps, PR_GET_DUMPABLE;"
        "assert keep_out_of_dumps();"
        "print(ctypes.CDLL(None).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
