"""FTP benchmark: `airgap serve` against vsftpd on this machine, in the same run.

    make bench-ftp                   # or: .venv/bin/python -m bench.ftp (as root, for vsftpd)
    AIRGAP_BENCH_DIR=/big/disk make bench-ftp

Both servers run here as child processes on 127.0.0.1, in the drop-box shape of the book's
ch9_ftpd (anonymous upload into pub/incoming, readable back): vsftpd from a private config
file, `airgap serve --tls off --anonymous read-write`. The same client, Python's ftplib with
1 MiB blocks, drives both. Data lives in tmpfs (/dev/shm) when there is room, so the figures
are the servers' cost, not the disk's. Measured:

* single stream: STOR then RETR of a 1 GiB file, median of five rounds, the servers taking
  turns, each transfer starting once the server is idle (airgap hashes what it received);
  each stored file is compared byte for byte with the source (untimed);
* 50 concurrent senders of 100 MB each, three rounds, each against a freshly started server:
  total time, errors (a refused or cut transfer, or a SIZE that differs afterwards), the
  server's peak memory and CPU time.

Targets (issue 3): single stream at least 0.8x vsftpd; 50 concurrent with zero errors and the
airgap server's peak RSS under 150 MB. The exit status is 1 when a server could not be run at
all (then its figures are FAIL), else 0, as in `bench.codec`.
"""

from __future__ import annotations

import contextlib
import filecmp
import ftplib
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bench.ftp_servers import (
    HOST,
    Server,
    ServerUnavailable,
    airgap_serve,
    vsftpd,
)

GIB, MIB = 1 << 30, 1 << 20
SINGLE_SIZE = GIB
SENDERS = 50
SENDER_SIZE = 100 * 1000 * 1000
ROUNDS = 5
CROWD_ROUNDS = 3
BLOCK = MIB
SOCKET_TIMEOUT = 60.0  # per socket operation; a stalled server fails the transfer
CROWD_TIMEOUT = 600.0  # the whole 50-sender phase
NEEDED = SINGLE_SIZE * 3 + SENDERS * SENDER_SIZE + GIB  # source, two stored copies, the crowd


class TransferError(Exception):
    """A transfer ended without the server holding (or giving) every byte."""


Starter = Callable[[Path], contextlib.AbstractContextManager[Server]]
SERVERS: dict[str, Starter] = {
    "airgap": lambda work: airgap_serve(work, concurrency=SENDERS),
    "vsftpd": vsftpd,
}


def scratch() -> Path:
    if "AIRGAP_BENCH_DIR" in os.environ:
        base = Path(os.environ["AIRGAP_BENCH_DIR"])
    else:
        base = Path("/dev/shm") if shutil.disk_usage("/dev/shm").free > NEEDED else Path("/tmp")
    return base / "airgap-bench-ftp"


class Repeat:
    """A file-like source of `size` bytes made of one block, so 50 senders cost no disk reads."""

    def __init__(self, block: bytes, size: int) -> None:
        self.view, self.left = memoryview(block), size

    def read(self, limit: int = -1) -> memoryview:
        count = min(self.left, len(self.view), limit if limit > 0 else len(self.view))
        self.left -= count
        return self.view[:count]


@contextlib.contextmanager
def session(server: Server) -> Iterator[ftplib.FTP]:
    ftp = ftplib.FTP(timeout=SOCKET_TIMEOUT)
    try:
        ftp.connect(HOST, server.port)
        ftp.login()  # anonymous, as the book's lftp does
        ftp.cwd("pub/incoming")
        yield ftp
        ftp.quit()
    finally:
        ftp.close()


def store(server: Server, name: str, source: BinaryIO | Repeat, size: int) -> None:
    with session(server) as ftp:
        ftp.storbinary(f"STOR {name}", source, BLOCK)  # type: ignore[arg-type]
        stored = ftp.size(name)
    if stored != size:
        raise TransferError(f"{name}: server holds {stored} bytes, sent {size}")


def retrieve(server: Server, name: str, size: int) -> None:
    received = 0

    def count(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)

    with session(server) as ftp:
        ftp.retrbinary(f"RETR {name}", count, BLOCK)
    if received != size:
        raise TransferError(f"{name}: received {received} bytes of {size}")


def make_source(path: Path) -> Path:
    with path.open("wb") as out:
        for _ in range(SINGLE_SIZE // MIB):
            out.write(os.urandom(MIB))
    return path


def settle(server: Server, timeout: float = 60.0) -> float:
    """Wait until the server is idle; its CPU seconds so far.

    Idle: no session process left (vsftpd's CPU time reaches its master only once a session
    process is reaped) and no CPU used for 0.3 s (airgap hashes every completed upload on a
    worker thread; on two cores that would otherwise be charged to the next transfer).
    """
    deadline = time.monotonic() + timeout
    before = server.account.cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = server.account.cpu_seconds()
        if now == before and len(server.account.pids()) == 1:
            return now
        before = now
    return before


@dataclass(frozen=True)
class Single:
    """One round: MB/s of the transfer, and server CPU seconds per GiB moved (with after-work)."""

    stor_mbs: float
    retr_mbs: float
    stor_cpu: float
    retr_cpu: float


def single_round(server: Server, source: Path, number: int) -> Single:
    """One STOR and one RETR of the source; the stored copy is checked byte for byte."""
    name = f"single-{number}.bin"
    size = source.stat().st_size
    idle = settle(server)
    start = time.perf_counter()
    with source.open("rb") as data:
        store(server, name, data, size)
    stored = time.perf_counter()
    after_store = settle(server)
    fetching = time.perf_counter()
    retrieve(server, name, size)
    done = time.perf_counter()
    after_retrieve = settle(server)
    on_disk = server.incoming / name
    if not filecmp.cmp(source, on_disk, shallow=False):
        raise TransferError(f"{server.name}: {name} on disk differs from what was sent")
    on_disk.unlink()  # tmpfs is memory: keep at most one stored copy per server
    gib = size / GIB
    return Single(
        stor_mbs=size / (stored - start) / 1e6,
        retr_mbs=size / (done - fetching) / 1e6,
        stor_cpu=(after_store - idle) / gib,
        retr_cpu=(after_retrieve - after_store) / gib,
    )


@dataclass(frozen=True)
class Crowd:
    seconds: float
    errors: tuple[str, ...]
    peak_rss_mb: float  # VmHWM of the server process, or the sampled sum over its processes
    peak_pss_mb: float
    processes: int
    cpu_seconds: float


def crowd(server: Server) -> Crowd:
    """SENDERS uploads of SENDER_SIZE bytes at once, each on its own connection and thread."""
    block = os.urandom(BLOCK)
    errors: list[str] = []
    go = threading.Barrier(SENDERS + 1, timeout=30)

    def sender(number: int) -> None:
        name = f"sender-{number:02d}.bin"
        try:
            go.wait()
            store(server, name, Repeat(block, SENDER_SIZE), SENDER_SIZE)
        except (
            ftplib.Error,
            OSError,
            EOFError,
            TransferError,
            threading.BrokenBarrierError,
        ) as exc:
            errors.append(f"sender {number}: {type(exc).__name__}: {exc}")

    idle = settle(server)
    threads = [threading.Thread(target=sender, args=(n,), daemon=True) for n in range(SENDERS)]
    for thread in threads:
        thread.start()
    server.sampler.start()
    go.wait()
    start = time.perf_counter()
    deadline = start + CROWD_TIMEOUT
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.perf_counter()))
    seconds = time.perf_counter() - start
    stuck = [n for n, thread in enumerate(threads) if thread.is_alive()]
    errors += [f"sender {n}: still running after {CROWD_TIMEOUT:.0f} s" for n in stuck]
    busy = settle(server)  # airgap's hashing of the uploads is part of the cost
    server.sampler.stop()
    sampled = server.sampler.peak_rss_kb / 1024
    peak = (
        max(server.sampler.vm_hwm_mb(), sampled) if server.sampler.peak_processes == 1 else sampled
    )
    return Crowd(
        seconds=seconds,
        errors=tuple(errors),
        peak_rss_mb=peak,
        peak_pss_mb=server.sampler.peak_pss_kb / 1024,
        processes=server.sampler.peak_processes,
        cpu_seconds=busy - idle,
    )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def single_stream(work: Path, source: Path, unavailable: dict[str, str]) -> dict[str, list[float]]:
    """Both servers up at once, taking turns, so drift on the machine hits both alike."""
    rates: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        running: dict[str, Server] = {}
        for name, start in SERVERS.items():
            try:
                running[name] = stack.enter_context(start(work / f"single-{name}"))
            except ServerUnavailable as exc:
                unavailable[name] = str(exc)
        for number in range(ROUNDS):
            for name, server in running.items():
                result = single_round(server, source, number)
                rates.setdefault(f"{name} STOR", []).append(result.stor_mbs)
                rates.setdefault(f"{name} RETR", []).append(result.retr_mbs)
                rates.setdefault(f"{name} STOR cpu", []).append(result.stor_cpu)
                rates.setdefault(f"{name} RETR cpu", []).append(result.retr_cpu)
    return rates


def crowds(work: Path, unavailable: dict[str, str]) -> dict[str, Crowd]:
    """CROWD_ROUNDS rounds, the servers taking turns, each round on a freshly started server."""
    runs: dict[str, list[Crowd]] = {}
    for number in range(CROWD_ROUNDS):
        for name, start in SERVERS.items():
            if name in unavailable:
                continue
            directory = work / f"crowd-{name}-{number}"
            try:
                with start(directory) as server:
                    runs.setdefault(name, []).append(crowd(server))
            except ServerUnavailable as exc:
                unavailable[name] = str(exc)
            shutil.rmtree(directory, ignore_errors=True)
    return {name: worst_of(results) for name, results in runs.items()}


def worst_of(runs: list[Crowd]) -> Crowd:
    """Median time and CPU; every error of every round; the highest memory seen."""
    return Crowd(
        seconds=statistics.median(r.seconds for r in runs),
        errors=tuple(e for r in runs for e in r.errors),
        peak_rss_mb=max(r.peak_rss_mb for r in runs),
        peak_pss_mb=max(r.peak_pss_mb for r in runs),
        processes=max(r.processes for r in runs),
        cpu_seconds=statistics.median(r.cpu_seconds for r in runs),
    )


def report_single(rates: dict[str, list[float]]) -> None:
    print(f"single stream, {SINGLE_SIZE / GIB:.0f} GiB file, median of {ROUNDS} (MB/s):")
    for verb in ("STOR", "RETR"):
        theirs = statistics.median(rates.get(f"vsftpd {verb}", [0.0]))
        if f"airgap {verb}" not in rates:
            print(f"  {verb}   airgap      n/a   vsftpd {theirs:7.1f}   target >=0.8x   FAIL")
            continue
        ours = statistics.median(rates[f"airgap {verb}"])
        ratio = ours / theirs if theirs else 0.0
        print(
            f"  {verb}   airgap {ours:7.1f}   vsftpd {theirs:7.1f}   = {ratio:4.2f}x"
            f"   target >=0.8x   {verdict(ratio >= 0.8)}"
        )
    # Wall-clock rates swing with whatever else the machine runs; CPU time per GiB does not
    # much, so it says whether a ratio is the server's doing or the neighbours'.
    print("  server CPU seconds per GiB (median; STOR includes airgap's hashing of the upload):")
    for verb in ("STOR", "RETR"):
        keys = [f"{n} {verb} cpu" for n in ("airgap", "vsftpd")]
        cells = [f"{statistics.median(rates[k]):5.2f}" if k in rates else "  n/a" for k in keys]
        print(f"  {verb}   airgap   {cells[0]}   vsftpd   {cells[1]}")


def report_crowd(results: dict[str, Crowd]) -> None:
    total_gb = SENDERS * SENDER_SIZE / 1e9
    print(
        f"\n{SENDERS} concurrent senders x {SENDER_SIZE / 1e6:.0f} MB ({total_gb:.1f} GB), "
        f"{CROWD_ROUNDS} rounds (median time and CPU, all errors, highest memory):"
    )
    print(f"  {'':<22}{'airgap':>16}{'vsftpd':>16}")

    def line(label: str, show: Callable[[Crowd], str]) -> None:
        cells = [show(results[n]) if n in results else "n/a" for n in ("airgap", "vsftpd")]
        print(f"  {label:<22}{cells[0]:>16}{cells[1]:>16}")

    line("total time", lambda c: f"{c.seconds:.1f} s")
    line("aggregate rate", lambda c: f"{total_gb * 1000 / c.seconds:.0f} MB/s")
    line("errors", lambda c: str(len(c.errors)))
    line("server peak RSS", lambda c: f"{c.peak_rss_mb:.0f} MB")
    line("server peak PSS", lambda c: f"{c.peak_pss_mb:.0f} MB")
    line("server processes", lambda c: str(c.processes))
    line("server CPU time", lambda c: f"{c.cpu_seconds:.1f} s")
    print("  (RSS of a forking server is summed over its processes; PSS shares pages out)")
    for name, result in results.items():
        for error in result.errors[:5]:
            print(f"  {name}: {error}")
    ours = results.get("airgap")
    print(f"  airgap: zero errors{'':<27}{verdict(ours is not None and not ours.errors)}")
    ok = ours is not None and ours.peak_rss_mb < 150
    print(f"  airgap: server peak RSS < 150 MB{'':<14}{verdict(ok)}")


def describe(work: Path) -> None:
    version = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "vsftpd"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    print(
        f"FTP benchmark: {os.cpu_count()} cores, loopback only, data in {work}; "
        f"one client for both (Python ftplib, {BLOCK // MIB} MiB blocks)\n"
        "  airgap serve --tls off --anonymous read-write (the book's mode); "
        f"vsftpd {version or '?'} with anonymous upload into pub/incoming\n"
    )


def main() -> int:
    if os.geteuid() != 0:
        print("bench.ftp: vsftpd must start as root (it chroots); run as root", file=sys.stderr)
        return 1
    work = scratch()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    unavailable: dict[str, str] = {}
    try:
        describe(work)
        source = make_source(work / "source.bin")
        report_single(single_stream(work, source, unavailable))
        source.unlink()
        report_crowd(crowds(work, unavailable))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, reason in unavailable.items():
        print(f"\nbench.ftp: {name} could not be run: {reason}", file=sys.stderr)
    return 1 if unavailable else 0


if __name__ == "__main__":
    sys.exit(main())
