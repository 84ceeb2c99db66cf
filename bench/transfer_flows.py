"""The four ways of moving an image across in the transfer benchmark, each timed step by step.

A flow starts with the image present, removes it before loading it back (the receiving side
does not have it; the removal and the syncs are not timed) and ends with the image present
again under its original id, which is checked. Every timed step is one process (a shell
pipeline counts as one) whose wall time and peak RSS (bench.peak) are kept.
Bytes moved are the sizes of the files that crossed; `bench.transfer` replaces them by the
kernel's count of the bytes on the wire when it can.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.ftp_servers import HOST, Appliance, Server
from bench.peak import measured, peak_mb
from bench.transfer_image import image_id, remove

AIRGAP = [sys.executable, "-m", "airgap.client"]
STEP_TIMEOUT = 1200.0  # one step of one flow; a hung step is killed and the flow fails
PUBLISH_TIMEOUT = 300.0


class FlowFailed(Exception):
    """A step failed or the image came back wrong; the message says which and why."""


@dataclass(frozen=True)
class Step:
    name: str
    seconds: float
    max_rss_mb: float
    cpu_seconds: float  # user + system of the step's processes (not the Docker daemon's)


@dataclass(frozen=True)
class Flow:
    name: str
    steps: tuple[Step, ...]
    up: int  # bytes client -> server
    down: int  # bytes server -> client
    counted: bool = False  # up/down counted on the wire (else: sizes of the files moved)

    @property
    def seconds(self) -> float:
        return sum(step.seconds for step in self.steps)

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


@dataclass(frozen=True)
class Setup:
    """One image and what every flow needs to move it."""

    work: Path  # this image's scratch directory
    tag: str
    image_id: str
    tar: Path  # `docker save` of the image, made untimed: the size reference, the floor's input
    keys: Path  # sender/ and receiver/, each from `airgap keygen`

    def fresh(self, name: str) -> Path:
        directory = self.work / name
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        return directory


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def run(
    name: str, command: list[str] | str, *, logs: Path, env: Mapping[str, str] | None = None
) -> tuple[Step, str]:
    """One timed step in its own process group; its stdout. A string runs under bash pipefail."""
    argv = ["bash", "-o", "pipefail", "-c", command] if isinstance(command, str) else command
    slug = "".join(c if c.isalnum() else "-" for c in name)
    out, err, peak = logs / f"{slug}.out", logs / f"{slug}.err", logs / f"{slug}.rss"
    argv = measured(argv, peak)
    with out.open("wb") as stdout, err.open("wb") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env,
            start_new_session=True,
        )  # fmt: skip
        timer = threading.Timer(STEP_TIMEOUT, _kill_group, (proc.pid,))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            _kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
    proc.returncode = code = os.waitstatus_to_exitcode(status)  # bash waited for its pipeline
    if code != 0:
        tail = " | ".join(err.read_text(errors="replace").strip().splitlines()[-4:])
        raise FlowFailed(f"{name}: exit code {code}: {tail or '(no message)'}")
    cpu = usage.ru_utime + usage.ru_stime
    return Step(name, seconds, peak_mb(peak, usage), cpu), out.read_text(errors="replace")


def settle() -> None:
    """Flush dirty pages between timed steps, so no step pays for another's writeback."""
    subprocess.run(["sync"], check=True, timeout=600)


def receive_side(setup: Setup) -> None:
    """The image is not on the receiving side: remove it (untimed)."""
    remove(setup.tag)
    settle()


def check_loaded(setup: Setup, flow: str) -> None:
    found = image_id(setup.tag)
    if found != setup.image_id:
        raise FlowFailed(f"{flow}: {setup.tag} is {found}, expected {setup.image_id}")


def book(setup: Setup, server: Server) -> Flow:
    """The book's ritual: docker save -o, lftp put, lftp get, docker load -i (plain FTP)."""
    work = setup.fresh("book")
    send, receive = work / "send", work / "receive"
    send.mkdir()
    receive.mkdir()
    lftp = ["lftp", "-p", str(server.port), "-e"]
    prologue = "set cmd:fail-exit yes; set ftp:ssl-allow no; cd pub/incoming"
    (server.incoming / "x.tar").unlink(missing_ok=True)  # a failed round's; vsftpd keeps it
    settle()
    steps = [
        run("save", ["docker", "save", "-o", str(send / "x.tar"), setup.tag], logs=work)[0],
        run("put", [*lftp, f"{prologue}; lcd {send}; put x.tar; exit", HOST], logs=work)[0],
        run("get", [*lftp, f"{prologue}; lcd {receive}; get x.tar; exit", HOST], logs=work)[0],
    ]
    size = (receive / "x.tar").stat().st_size
    receive_side(setup)
    steps.append(run("load", ["docker", "load", "-i", str(receive / "x.tar")], logs=work)[0])
    check_loaded(setup, "book")
    (server.incoming / "x.tar").unlink()
    shutil.rmtree(send)
    shutil.rmtree(receive)
    return Flow("book", tuple(steps), size, size)


def expert(setup: Setup, server: Server) -> Flow:
    """docker save | zstd -1 -T0 | age | curl -T -, and back: curl | age -d | zstd -d | load."""
    work = setup.fresh("expert")
    url = shlex.quote(f"ftp://{HOST}:{server.port}/pub/incoming/x.tar.zst.age")
    recipients = shlex.quote(str(setup.keys / "receiver" / "recipient.txt"))
    identity = shlex.quote(str(setup.keys / "receiver" / "identity.txt"))
    tag = shlex.quote(setup.tag)
    up = f"docker save {tag} | zstd -q -1 -T0 | age -R {recipients} | curl -sS -T - {url}"
    down = f"curl -sS {url} | age -d -i {identity} | zstd -q -d | docker load"
    (server.incoming / "x.tar.zst.age").unlink(missing_ok=True)
    settle()
    steps = [run("send", up, logs=work)[0]]
    size = (server.incoming / "x.tar.zst.age").stat().st_size
    receive_side(setup)
    steps.append(run("fetch", down, logs=work)[0])
    check_loaded(setup, "expert")
    (server.incoming / "x.tar.zst.age").unlink()
    return Flow("expert", tuple(steps), size, size)


def floor(setup: Setup) -> Flow:
    """What any way across costs at least: docker save to nowhere, docker load of a local tar."""
    work = setup.fresh("floor")
    tag = shlex.quote(setup.tag)
    settle()
    steps = [run("save", f"docker save {tag} > /dev/null", logs=work)[0]]
    receive_side(setup)
    steps.append(run("load", ["docker", "load", "-i", str(setup.tar)], logs=work)[0])
    check_loaded(setup, "floor")
    return Flow("floor", tuple(steps), 0, 0)


def bound(setup: Setup) -> Flow:
    """The least a flow can take here that compresses as well as the wire target asks: zstd -1
    (``--fast=1``, the next faster setting, gave 0.456x of this image's tar), `docker save |
    zstd -1 -T0` into a local file, then `zstd -d | docker load`. No encryption, no hashing, no
    network and no check: nothing crosses a wire, so no bytes are counted."""
    work = setup.fresh("bound")
    packed = work / "x.tar.zst"
    tag, path = shlex.quote(setup.tag), shlex.quote(str(packed))
    settle()
    steps = [run("send", f"docker save {tag} | zstd -q -1 -T0 > {path}", logs=work)[0]]
    receive_side(setup)
    steps.append(run("fetch", f"zstd -q -d -c {path} | docker load", logs=work)[0])
    check_loaded(setup, "bound")
    packed.unlink()
    return Flow("bound", tuple(steps), 0, 0)


def airgap_env(work: Path, password: str) -> dict[str, str]:
    """Each flow its own cache, state and config: a ledger left by an earlier round would make
    the send incremental (nothing to send), while the receiver's engine lost the image."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRGAP_")}
    for name in ("CACHE", "STATE", "CONFIG"):
        env[f"XDG_{name}_HOME"] = str(work / "airgap-home" / name.lower())
    env["AIRGAP_PASSWORD"] = password
    return env


def _published(appliance: Appliance, bundle_id: str) -> Step:
    """The appliance checks the bundle and publishes it: timed, as the receiver waits for it."""
    start = time.perf_counter()
    target = appliance.outgoing / f"{bundle_id}.manifest.json.minisig"
    while not target.exists():
        for reason in (appliance.root / "quarantine").glob(f"{bundle_id}*/reason.txt"):
            raise FlowFailed(f"airgap: bundle quarantined: {reason.read_text().strip()}")
        if time.perf_counter() - start > PUBLISH_TIMEOUT:
            raise FlowFailed(f"airgap: bundle {bundle_id} not published in {PUBLISH_TIMEOUT} s")
        time.sleep(0.02)
    return Step("publish", time.perf_counter() - start, 0.0, 0.0)


def _summary(text: str, step: str) -> dict[str, Any]:
    try:
        found: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise FlowFailed(f"airgap {step}: no JSON summary on stdout: {text!r}") from exc
    return found


def airgap(setup: Setup, appliance: Appliance) -> Flow:
    """airgap send (signed, encrypted; FTPS with a pinned certificate, or plain FTP when the
    appliance has no TLS), then airgap fetch."""
    plain = appliance.fingerprint is None
    work = setup.fresh("airgap-ftp" if plain else "airgap")
    keys = setup.keys
    pin = [] if plain else ["--tls-fingerprint", str(appliance.fingerprint)]
    send = [*AIRGAP, "send", setup.tag, "--server", appliance.url("sender"), *pin]
    send += ["-R", str(keys / "receiver" / "recipient.txt")]
    send += ["--sign-key", str(keys / "sender" / "signing.key"), "--quiet", "--json"]
    fetch = [*AIRGAP, "fetch", "--server", appliance.url("receiver"), *pin]
    fetch += ["-i", str(keys / "receiver" / "identity.txt")]
    fetch += ["--trust", str(keys / "sender" / "signing.pub"), "--consume", "--quiet", "--json"]
    settle()
    sent, out = run("send", send, logs=work, env=airgap_env(work, appliance.passwords["sender"]))
    summary = _summary(out, "send")
    steps = [sent, _published(appliance, summary["id"])]
    receive_side(setup)
    env = airgap_env(work, appliance.passwords["receiver"])
    fetched, out = run("fetch", fetch, logs=work, env=env)
    got = _summary(out, "fetch")
    if [b["id"] for b in got["bundles"] if b["ok"]] != [summary["id"]]:
        raise FlowFailed(f"airgap fetch did not import bundle {summary['id']}: {got}")
    check_loaded(setup, work.name)
    up, down = summary.get("bytes_on_wire"), got.get("bytes_on_wire")
    payload = int(summary["payload_bytes"])
    return Flow(work.name, (*steps, fetched), int(up or payload), int(down or payload))
