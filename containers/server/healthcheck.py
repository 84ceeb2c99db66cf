"""Container HEALTHCHECK of the airgap appliance: healthy when its control port says "220".

Run by Docker inside the server image (`python3 /opt/airgap/healthcheck.py`). The address is
the running `airgap serve`'s ``--listen HOST:PORT``, else ``AIRGAP_SERVE_LISTEN`` (as serve
reads it), else serve's default 127.0.0.1:2121, so overriding the command (another port, as
``--network host`` often needs) keeps the check right. A wildcard host is checked on loopback.

It needs only the standard library, must not import airgap (a broken install must still be
reported as unhealthy, not crash differently), and must never log in or send credentials.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

DEFAULT = "127.0.0.1:2121"
WILDCARDS = {"", "0.0.0.0", "::", "*"}  # noqa: S104 - names of wildcards, not a bind


def listen_from_cmdline(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--listen" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--listen="):
            return arg.split("=", 1)[1]
    return None


def serve_listen_address() -> str | None:
    """The --listen of the `airgap serve` process in this container (PID 1 unless --init)."""
    for proc in sorted(Path("/proc").glob("[0-9]*"), key=lambda p: int(p.name)):
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # the process ended while we looked, or is not ours to read
            continue
        if "serve" in argv:
            return listen_from_cmdline(argv)
    return None


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in WILDCARDS:
        host = "::1" if ":" in host else "127.0.0.1"
    return host, int(port)


def main() -> int:
    address = serve_listen_address() or os.environ.get("AIRGAP_SERVE_LISTEN") or DEFAULT
    host, port = split(address)
    try:
        with socket.create_connection((host, port), timeout=4) as conn:
            greeting = conn.recv(512)
            conn.sendall(b"QUIT\r\n")
    except OSError as exc:
        print(f"unhealthy: {host}:{port}: {exc}")
        return 1
    if not greeting.startswith(b"220"):
        print(f"unhealthy: {host}:{port} greeted {greeting[:60]!r}")
        return 1
    print(f"healthy: {host}:{port} {greeting.decode(errors='replace').strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
