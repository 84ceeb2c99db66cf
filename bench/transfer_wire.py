"""Bytes on the wire, counted by the kernel: nftables counters on the loopback interface.

Every server of the transfer benchmark listens on its own control port and passive range, so
the IP packets arriving on `lo` for those ports are that server's traffic and nothing else:
client to server (`up`: to a server port) and server to client (`down`: from one). The count
is of whole IP packets, so FTP commands, TCP/IP headers and TLS records are all in it.

The counters live in one private table, `inet airgap_bench_transfer`, that only counts (its
chain accepts everything, and another table's verdicts are untouched); it is made at the start
and deleted at the end, and a table of that name left by a killed run is replaced. Without
nft (or without root) `WireMeter.available` is false and the flows report file sizes instead.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator

TABLE = "airgap_bench_transfer"


class WireMeter:
    def __init__(self) -> None:
        self.available = False
        self._nft("delete", "table", "inet", TABLE, check=False)
        script = (
            f"table inet {TABLE} {{\n"
            "  chain input { type filter hook input priority -150; policy accept; }\n"
            "}\n"
        )
        self.available = self._run(["nft", "-f", "-"], script, check=False)

    def _run(self, command: list[str], script: str | None = None, *, check: bool = True) -> bool:
        try:
            done = subprocess.run(command, input=script, capture_output=True, text=True, timeout=30)
        except OSError:
            return False
        if check and done.returncode != 0:
            raise OSError(f"{' '.join(command)}: {done.stderr.strip()}")
        return done.returncode == 0

    def _nft(self, *args: str, check: bool = True) -> bool:
        return self._run(["nft", *args], check=check)

    def watch(self, name: str, port: int, passive: tuple[int, int]) -> None:
        """Count the traffic of the server on ``port`` and ``passive`` as ``name``."""
        if not self.available:
            return
        ports = f"{{ {port}, {passive[0]}-{passive[1]} }}"
        script = ""
        for direction, match in (("up", "dport"), ("down", "sport")):
            counter = f"{name}_{direction}"
            script += f"add counter inet {TABLE} {counter}\n"
            script += (
                f'add rule inet {TABLE} input iifname "lo" tcp {match} {ports} '
                f'counter name "{counter}"\n'
            )
        self._run(["nft", "-f", "-"], script)

    def read(self, name: str) -> tuple[int, int]:
        """Bytes (up, down) counted for ``name`` so far; (0, 0) without nft."""
        if not self.available:
            return 0, 0
        found = []
        for direction in ("up", "down"):
            done = subprocess.run(
                ["nft", "-j", "list", "counter", "inet", TABLE, f"{name}_{direction}"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            items = json.loads(done.stdout)["nftables"]
            found.append(next(int(i["counter"]["bytes"]) for i in items if "counter" in i))
        return found[0], found[1]

    def close(self) -> None:
        if self.available:
            self._nft("delete", "table", "inet", TABLE, check=False)
            self.available = False


@contextlib.contextmanager
def wire_meter() -> Iterator[WireMeter]:
    meter = WireMeter()
    try:
        yield meter
    finally:
        meter.close()
