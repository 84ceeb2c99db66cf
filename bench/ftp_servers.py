"""The FTP servers of the benchmarks, as child processes on loopback, and their costs.

`bench.ftp` measures `airgap serve` against Debian's vsftpd in the same run. This module starts
either one on 127.0.0.1 with a free control port and a free passive range, in a private
directory, in the same drop-box shape (anonymous uploads into ``pub/incoming``, readable back),
and reads what the server process tree costs from /proc: resident memory and CPU time.
`bench.transfer` also runs the appliance as shipped (:func:`airgap_appliance`: FTPS required,
sender and receiver accounts, a trusted signer), and either server throttled (``max_rate``).

It must never touch the system's vsftpd (/etc/vsftpd.conf, the service): vsftpd gets a private
config file and runs in the foreground as our child, killed at the end. Nothing listens on
anything but 127.0.0.1. The only thing made outside the work directory is one cgroup per
server for CPU accounting, removed when the server stops.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
PASSIVE_PORTS = 200  # > 50 concurrent data connections, with room for ports in TIME_WAIT
START_TIMEOUT = 30.0
TICKS = os.sysconf("SC_CLK_TCK")


class ServerUnavailable(Exception):
    """The server could not be started; the message says why (its stderr, mostly)."""


@dataclass
class Server:
    """A running server: where to connect, where its uploads land on disk, its process."""

    name: str
    port: int
    incoming: Path  # the directory that is `pub/incoming` for an anonymous client
    proc: subprocess.Popen[bytes]
    log: Path
    passive: tuple[int, int] = (0, 0)  # the passive port range, first and last
    account: Accounting = field(init=False)
    sampler: MemorySampler = field(init=False)

    def __post_init__(self) -> None:
        self.account = Accounting(self.proc.pid, self.name)
        self.sampler = MemorySampler(self.account)


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def free_port_range(count: int = PASSIVE_PORTS) -> tuple[int, int]:
    """A run of ports that are free now (below the kernel's ephemeral range, 32768+)."""
    for _ in range(50):
        first = random.randrange(20000, 32000 - count)
        if all(_bindable(p) for p in range(first, first + count)):
            return first, first + count - 1
    raise ServerUnavailable("no free range of passive ports on 127.0.0.1")


def _wait_for_greeting(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            tail = server.log.read_text(errors="replace").strip().splitlines()[-8:]
            raise ServerUnavailable(
                f"{server.name} exited with code {server.proc.returncode}: " + "\n  ".join(tail)
            )
        with contextlib.suppress(OSError), socket.create_connection((HOST, server.port), 2) as c:
            if c.recv(64).startswith(b"220"):
                return
        time.sleep(0.1)
    raise ServerUnavailable(f"{server.name} did not greet on {HOST}:{server.port} in time")


def _stop(server: Server) -> None:
    server.sampler.stop()
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    server.account.close()


VSFTPD_CONF = """\
listen=YES
listen_ipv6=NO
listen_address={host}
listen_port={port}
background=NO
anonymous_enable=YES
no_anon_password=YES
anon_root={root}
anon_upload_enable=YES
anon_mkdir_write_enable=NO
anon_other_write_enable=NO
anon_world_readable_only=YES
anon_umask=022
write_enable=YES
local_enable=NO
pasv_enable=YES
pasv_address={host}
pasv_min_port={pasv_min}
pasv_max_port={pasv_max}
port_enable=NO
connect_from_port_20=NO
max_clients=500
max_per_ip=500
idle_session_timeout=120
data_connection_timeout=120
secure_chroot_dir={empty}
xferlog_enable=NO
syslog_enable=NO
vsftpd_log_file={log}
hide_ids=YES
ssl_enable=NO
seccomp_sandbox=NO
ftpd_banner=vsftpd (airgap benchmark)
anon_max_rate={max_rate}
use_sendfile={sendfile}
"""


@contextlib.contextmanager
def vsftpd(workdir: Path, *, max_rate: int = 0) -> Iterator[Server]:
    """vsftpd as a drop box like the book's ch9_ftpd: anonymous write into pub/incoming.

    ``max_rate``: bytes per second per transfer (vsftpd's anon_max_rate), 0 for no limit.
    Throttled, it sends without sendfile(2): with it, vsftpd 3.0.3 let downloads run at up to
    2.4x the limit here, not every time (uploads kept to it); through write(2) both keep to it.
    """
    binary = shutil.which("vsftpd") or "/usr/sbin/vsftpd"
    if not Path(binary).exists():
        raise ServerUnavailable("vsftpd is not installed (apt-get install vsftpd)")
    # vsftpd refuses a chroot (anon_root) the anonymous user can write to, so the root is
    # root's and only pub/incoming belongs to the `ftp` user.
    root, empty = workdir / "vsftpd-root", workdir / "vsftpd-empty"
    incoming = root / "pub" / "incoming"
    incoming.mkdir(parents=True)
    empty.mkdir()
    for directory in (workdir, root, root / "pub", empty):
        directory.chmod(0o755)
    shutil.chown(incoming, "ftp", "ftp")
    port, (pasv_min, pasv_max) = free_port(), free_port_range()
    conf, log = workdir / "vsftpd.conf", workdir / "vsftpd.log"
    conf.write_text(
        VSFTPD_CONF.format(
            host=HOST,
            port=port,
            root=root,
            pasv_min=pasv_min,
            pasv_max=pasv_max,
            empty=empty,
            log=workdir / "vsftpd.xferlog",
            max_rate=max_rate,
            sendfile="NO" if max_rate else "YES",
        )
    )
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, str(conf)], stdout=out, stderr=out)
    server = Server("vsftpd", port, incoming, proc, log, (pasv_min, pasv_max))
    try:
        _wait_for_greeting(server)
        yield server
    finally:
        _stop(server)


def _airgap_command(root: Path, port: int, passive: tuple[int, int], *args: str) -> list[str]:
    command = [sys.executable, "-m", "airgap.client", "serve", "--listen", f"{HOST}:{port}"]
    ports = f"{passive[0]}-{passive[1]}"
    return [*command, "--root", str(root), "--passive-ports", ports, *args]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AIRGAP_")}


@contextlib.contextmanager
def _airgap_server(workdir: Path, args: list[str], env: dict[str, str]) -> Iterator[Server]:
    root = workdir / "airgap-root"
    root.mkdir(parents=True)
    port, passive = free_port(), free_port_range()
    log = workdir / "airgap-serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _airgap_command(root, port, passive, *args),
            stdout=out,
            stderr=out,
            env=env,
            cwd=workdir,
        )
    server = Server("airgap", port, root / "pub" / "incoming", proc, log, passive)
    try:
        _wait_for_greeting(server)
        yield server
    finally:
        _stop(server)


@contextlib.contextmanager
def airgap_serve(workdir: Path, *, concurrency: int) -> Iterator[Server]:
    """`airgap serve` in the book's mode (anonymous read-write, plain FTP) on its own root."""
    env = _clean_env()
    # All clients come from 127.0.0.1: lift the per-IP limit (16 by default) above the load.
    # The total counts every socket of pyftpdlib's IO loop (control, passive listener, data),
    # so a transfer holds three of them: 256 by default would refuse the 86th sender.
    env |= {
        "AIRGAP_SERVE_MAX_CONNECTIONS_PER_IP": str(concurrency + 10),
        "AIRGAP_SERVE_MAX_CONNECTIONS": str(3 * concurrency + 30),
    }
    with _airgap_server(workdir, ["--tls", "off", "--anonymous", "read-write"], env) as server:
        yield server


@dataclass(frozen=True)
class Appliance:
    """`airgap serve` as shipped (FTPS required), or with `--tls off`; its two accounts, one
    trusted signer."""

    server: Server
    root: Path
    fingerprint: str | None  # "sha256:HEX" of its certificate, as --tls-fingerprint takes it
    passwords: dict[str, str]  # account name -> password (state/credentials.txt)

    def url(self, account: str) -> str:
        scheme = "ftp" if self.fingerprint is None else "ftps"
        return f"{scheme}://{account}@{HOST}:{self.server.port}/"

    @property
    def outgoing(self) -> Path:
        return self.root / "pub" / "outgoing"


@contextlib.contextmanager
def airgap_appliance(
    workdir: Path, *, trusted_signer: Path, max_rate: int = 0, tls: bool = True
) -> Iterator[Appliance]:
    """The appliance with `--tls required` (``tls``) or `--tls off`; ``max_rate`` as
    `--max-rate` (0: no limit)."""
    args = ["--tls", "required" if tls else "off", "--trusted-signer", str(trusted_signer)]
    args += ["--max-rate", str(max_rate)] if max_rate else []
    with _airgap_server(workdir, args, _clean_env()) as server:
        root = server.incoming.parent.parent
        fingerprint = None
        if tls:
            log = server.log.read_text(errors="replace")
            match = re.search(r"certificate (sha256:[0-9a-f]{64})", log)
            if match is None:
                raise ServerUnavailable(f"airgap serve printed no certificate fingerprint: {log}")
            fingerprint = match.group(1)
        passwords = {}
        for line in (root / "state" / "credentials.txt").read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                passwords[parts[0]] = parts[2]
        yield Appliance(server, root, fingerprint, passwords)


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants now."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _status_kb(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _pss_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


CGROUP_V1 = Path("/sys/fs/cgroup/cpuacct")
CGROUP_V2 = Path("/sys/fs/cgroup")


class Accounting:
    """The server's processes and the CPU time they used, by a cgroup of its own if possible.

    vsftpd moves data in a per-session child that its session process does not reap, so that
    time never reaches the master's cutime in /proc; a cgroup counts every process the server
    ever ran. The cgroup is ours (made here, removed in close()); without permission to make
    one, /proc's process tree and reaped-children times stand in, and `exact` says so.
    """

    def __init__(self, pid: int, name: str) -> None:
        self.pid = pid
        self.group: Path | None = None
        self.exact = False
        for root in (CGROUP_V1, CGROUP_V2):
            own = root / f"airgap-bench-{name}-{pid}"
            try:
                own.mkdir()
            except OSError:
                continue
            try:
                (own / "cgroup.procs").write_text(str(pid))
            except OSError:
                own.rmdir()
                continue
            self.group, self.exact = own, True
            break

    def pids(self) -> list[int]:
        if self.group is None:
            return process_tree(self.pid)
        with contextlib.suppress(OSError, ValueError):
            return [int(p) for p in (self.group / "cgroup.procs").read_text().split()]
        return []

    def cpu_seconds(self) -> float:
        if self.group is not None and (self.group / "cpuacct.usage").exists():
            return int((self.group / "cpuacct.usage").read_text()) / 1e9
        if self.group is not None:
            for line in (self.group / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15]) / TICKS  # utime stime cutime cstime

    def close(self) -> None:
        """Hand any straggler back to our own cgroup, then remove the server's."""
        if self.group is None:
            return
        parent = self.group.parent / "cgroup.procs"
        for pid in self.pids():
            with contextlib.suppress(OSError):
                parent.write_text(str(pid))
        for _ in range(50):
            try:
                self.group.rmdir()
                break
            except OSError:  # the last process may still be exiting
                time.sleep(0.1)
        self.group = None


class MemorySampler:
    """Peak memory of a process tree, sampled every 50 ms while a phase runs.

    RSS summed over processes counts shared pages once per process, which overstates a
    forking server such as vsftpd; PSS shares them out, so both are kept. For a single-process
    server, VmHWM (the kernel's own peak) is exact and is what the target is checked against.
    """

    def __init__(self, account: Accounting) -> None:
        self.account = account
        self.peak_rss_kb = 0
        self.peak_pss_kb = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.peak_rss_kb = self.peak_pss_kb = self.peak_processes = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def vm_hwm_mb(self) -> float:
        return _status_kb(self.account.pid, "VmHWM") / 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = self.account.pids()
            self.peak_processes = max(self.peak_processes, len(pids))
            self.peak_rss_kb = max(self.peak_rss_kb, sum(_status_kb(p, "VmRSS") for p in pids))
            self.peak_pss_kb = max(self.peak_pss_kb, sum(_pss_kb(p) for p in pids))
            self._stop.wait(0.05)
