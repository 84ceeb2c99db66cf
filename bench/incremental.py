"""Incremental send benchmark: an update of the realistic image, thin, beside the book's flow.

    make bench-incremental           # or: .venv/bin/python -m bench.incremental (as root)
    AIRGAP_BENCH_DIR=/big/disk make bench-incremental
    AIRGAP_BENCH_ROUNDS=1 make bench-incremental     # one round of the update flows, not three

The scenario: the far side already holds an image, and a new version of it adds one layer.
v1 is the transfer benchmark's realistic image (bench.transfer_image, about 1.3 GB, built once
and kept); v2 is v1 plus one layer of 10 MB of this machine's /usr/share (bench.incremental_image,
built FROM v1 for the run, removed at the end). One appliance (`airgap serve --tls required`)
and one vsftpd serve the whole run, on 127.0.0.1.

First, untimed as a flow but shown: v1 goes across with airgap (send, publish, v1 removed, fetch,
its id checked), so the sender's ledger records its layers and the far side holds them. Then,
in each round, v2 moves three ways, each starting with v2 present and v1 kept, v2 removed
(untimed) before the load and its id checked after, each airgap flow with a fresh state and
cache whose only content is a copy of the ledger as v1's send left it:

1. book: `docker save -o v2.tar`, lftp `put` to vsftpd, lftp `get`, `docker load -i`: the
   whole image again (the far side's docker load skips the layers it has, after reading them);
2. airgap: `airgap send v2` (thin: v1's layers left out, as the bundle's manifest must say)
   through the appliance, its check and publication, `airgap fetch` (verify, decrypt, load);
3. airgap --full: the same with `airgap send --full`, every layer sent (context).

Bytes on the wire are the kernel's count of IP packets to and from each server's ports on `lo`
(bench.transfer_wire, as in bench.transfer), both directions over the whole flow, so the FTP
commands, TLS handshakes and TCP/IP headers are in them; `airgap send --json` reports its own
count beside. The reference is the new layer alone: its tar cut out of `docker save v2` by its
diff id and compressed with `zstd -1` (airgap's default level).

Targets (the issue), printed as PASS/FAIL beside each figure: for flow 2, bytes on the wire each
way at most 1.05x the compressed new layer plus 64 KiB. Its total time is shown as a ratio of
the book's, measured in the same run (the issue sets no limit on it). The rounds are rotated
(each starts with the next flow) and each flow's median round is shown. The exit status is 1
when a flow could not be run at all (its figures are then FAIL), else 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench.ftp_servers import Appliance, Server, airgap_appliance, vsftpd
from bench.incremental_image import (
    SOURCE,
    UPDATE_BYTES,
    UPDATE_TAG,
    Layer,
    build_update,
    cut_layer,
    measure_layer,
    pick,
    top_diff_id,
)
from bench.transfer import (
    FAILURES,
    GIB,
    MB,
    ROUNDS,
    Outcome,
    attempt,
    make_keys,
    measured,
    median,
    preflight,
    prepare,
    verdict,
)
from bench.transfer_flows import (
    AIRGAP,
    Flow,
    FlowFailed,
    Setup,
    _published,
    _summary,
    airgap,
    book,
    check_loaded,
    receive_side,
    run,
    settle,
)
from bench.transfer_image import BIG, image_id, remove
from bench.transfer_image import docker as docker_cli
from bench.transfer_image import layer_count as layers
from bench.transfer_wire import WireMeter, wire_meter

NEEDED = 6 * GIB  # v2's reference tar, the book's sent, served and received copies, spools
SLACK = 64 * 1024  # bytes of overhead the issue allows on top of 1.05x the compressed layer
LEDGERS = Path("state", "airgap", "sent")  # under an airgap home (XDG_STATE_HOME = home/state)


@dataclass(frozen=True)
class Sent(Flow):
    """An airgap flow, with what `airgap send --json` and the bundle's manifest said."""

    reported: int = 0  # bytes_on_wire, as the send counted them
    payload: int = 0  # bytes of the encrypted payload
    omitted: int = 0  # layers the manifest lists as left out


@dataclass(frozen=True)
class Phase:
    """What the update flows need: v2 and its reference tar, the servers, the v1 ledger."""

    setup: Setup
    appliance: Appliance
    ftpd: Server
    ledgers: Path  # the sender's ledgers right after v1 was sent
    base_layers: int


def scratch() -> Path:
    if "AIRGAP_BENCH_DIR" in os.environ:
        base = Path(os.environ["AIRGAP_BENCH_DIR"])
    else:
        base = Path("/dev/shm") if shutil.disk_usage("/dev/shm").free > NEEDED else Path("/tmp")
    return base / "airgap-bench-incremental"


def home_env(home: Path, password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRGAP_")}
    for name in ("CACHE", "STATE", "CONFIG"):
        env[f"XDG_{name}_HOME"] = str(home / name.lower())
    env["AIRGAP_PASSWORD"] = password
    return env


def update(phase: Phase, *, full: bool) -> Sent:
    """airgap send of v2 (thin, or --full), publication, then airgap fetch into the engine."""
    setup, appliance = phase.setup, phase.appliance
    name = "full" if full else "thin"
    work = setup.fresh(name)
    home = work / "home"
    shutil.copytree(phase.ledgers, home / LEDGERS)  # the far side holds v1, nothing more
    assert appliance.fingerprint is not None  # started with TLS: the pin goes with it
    keys, pin = setup.keys, ["--tls-fingerprint", appliance.fingerprint]
    send = [*AIRGAP, "send", setup.tag, "--server", appliance.url("sender"), *pin]
    send += ["-R", str(keys / "receiver" / "recipient.txt"), *(["--full"] if full else [])]
    send += ["--sign-key", str(keys / "sender" / "signing.key"), "--quiet", "--json"]
    fetch = [*AIRGAP, "fetch", "--server", appliance.url("receiver"), *pin]
    fetch += ["-i", str(keys / "receiver" / "identity.txt")]
    fetch += ["--trust", str(keys / "sender" / "signing.pub"), "--consume", "--quiet", "--json"]
    for stale in appliance.outgoing.glob("*"):  # a failed round's bundle: fetch would take it
        stale.unlink()
    settle()
    env = home_env(home, appliance.passwords["sender"])
    sent, out = run("send", send, logs=work, env=env)
    summary = _summary(out, "send")
    steps = [sent, _published(appliance, summary["id"])]
    manifest = json.loads((appliance.outgoing / f"{summary['id']}.manifest.json").read_text())
    omitted = len(manifest["content"].get("omitted", []))
    if omitted != (0 if full else phase.base_layers):
        raise FlowFailed(f"airgap {name}: the bundle leaves out {omitted} layers")
    receive_side(setup)
    env = home_env(home, appliance.passwords["receiver"])
    fetched, out = run("fetch", fetch, logs=work, env=env)
    got = _summary(out, "fetch")
    if [b["id"] for b in got["bundles"] if b["ok"]] != [summary["id"]]:
        raise FlowFailed(f"airgap fetch did not import bundle {summary['id']}: {got}")
    check_loaded(setup, f"airgap {name}")
    reported, payload = int(summary["bytes_on_wire"] or 0), int(summary["payload_bytes"])
    down = int(got.get("bytes_on_wire") or payload)
    steps.append(fetched)
    return Sent(name, tuple(steps), reported or payload, down, False, reported, payload, omitted)


def send_base(base: Setup, appliance: Appliance, meter: WireMeter) -> Path:
    """v1 across with airgap (its layers now in the ledger and on the far side); the ledgers."""
    done = attempt(base, partial(measured, meter, "airgap", partial(airgap, base, appliance)))
    if isinstance(done, str):
        raise FlowFailed(f"sending v1 with airgap: {done}")
    ledgers = base.work / "airgap-home" / LEDGERS
    held = {c for p in ledgers.glob("*.json") for c in json.loads(p.read_text())["layers"]}
    print(
        f"v1 sent with airgap (full: its ledger was empty) and fetched: {done.seconds:.1f} s, "
        f"{done.up / MB:,.0f} MB up, {done.down / MB:,.0f} MB down; "
        f"the ledger now holds {len(held)} layers"
    )
    return ledgers


def prepare_update(base: Setup, work: Path, keys: Path) -> tuple[Setup, Layer]:
    """v2 built FROM v1 with the new layer, its reference tar, and the new layer's sizes."""
    start = time.perf_counter()
    files = pick()
    build_update(base.tag, UPDATE_TAG, files)
    found = image_id(UPDATE_TAG)
    assert found is not None
    directory = work / "v2"
    directory.mkdir()
    tar = directory / "image.tar"
    docker_cli("save", "-o", str(tar), UPDATE_TAG)
    diff_id = top_diff_id(UPDATE_TAG)
    cut_layer(tar, diff_id, directory / "layer.tar")
    layer = measure_layer(
        directory / "layer.tar", diff_id, files, keys / "receiver" / "recipient.txt"
    )
    (directory / "layer.tar").unlink()
    print(
        f"image {UPDATE_TAG} (built in {time.perf_counter() - start:.0f} s): FROM {base.tag} + "
        f"1 layer, {layers(UPDATE_TAG)} layers, docker save tar {tar.stat().st_size / MB:,.0f} "
        f"MB, id {found[:19]}\n"
        f"new layer {diff_id[:19]}: {layer.files} files of {SOURCE} ({layer.content:,} bytes), "
        f"tar {layer.tar:,} B\n"
        f"  zstd -1 of it: {layer.zstd:,} B ({layer.zstd / layer.tar:.2f}x the tar); "
        f"through age -R: {layer.age:,} B (age adds {layer.age - layer.zstd:,} B)"
    )
    return Setup(directory, UPDATE_TAG, found, tar, keys), layer


LABELS = {
    "book": "1 book      docker save -o v2, lftp put/get, docker load -i: everything again",
    "thin": "2 airgap    airgap send v2 (thin) + publish + airgap fetch, FTPS, encrypted, signed",
    "full": "3 --full    airgap send --full v2 + publish + airgap fetch (context)",
}


def run_rounds(phase: Phase, meter: WireMeter, rounds: int) -> dict[str, Outcome]:
    setup = phase.setup
    flows: dict[str, Callable[[], Flow]] = {
        "book": partial(measured, meter, "vsftpd", partial(book, setup, phase.ftpd)),
        "thin": partial(measured, meter, "airgap", partial(update, phase, full=False)),
        "full": partial(measured, meter, "airgap", partial(update, phase, full=True)),
    }
    names = tuple(flows)
    runs: dict[str, list[Outcome]] = {name: [] for name in names}
    for number in range(rounds):
        turn = number % len(names)  # each round starts with the next flow
        for name in names[turn:] + names[:turn]:
            done = attempt(setup, flows[name])
            runs[name].append(done)
            said = (
                f"{done.seconds:.1f} s, up {done.up:,} B, down {done.down:,} B"
                if isinstance(done, Flow)
                else f"FAILED: {done}"
            )
            print(f"  ... round {number + 1}, {name}: {said}", file=sys.stderr, flush=True)
    return {name: median(outcomes) for name, outcomes in runs.items()}


def show_flows(results: dict[str, Outcome]) -> None:
    print(f"  {'':<12}{'wall':>9}{'up MB':>11}{'down MB':>11}   steps (s)")
    for name, outcome in results.items():
        number, label = LABELS[name].split(None, 1)
        print(f"  {number} {label}")
        if isinstance(outcome, str):
            print(f"  {'':<12}FAILED: {outcome}")
            continue
        steps = ", ".join(f"{s.name} {s.seconds:.1f}" for s in outcome.steps)
        print(
            f"  {'':<12}{outcome.seconds:7.1f} s{outcome.up / MB:11,.2f}"
            f"{outcome.down / MB:11,.2f}   {steps}"
        )
    if not all(o.counted for o in results.values() if isinstance(o, Flow)):
        print("  (up/down: sizes of the files moved; nft was not available to count the wire)")


def judge(results: dict[str, Outcome], layer: Layer) -> None:
    ours, book_flow, full = results["thin"], results["book"], results["full"]
    limit = int(1.05 * layer.zstd) + SLACK
    print(
        f"targets for 2 (airgap, thin): wire each way <= 1.05 x {layer.zstd:,} B "
        f"(zstd -1 of the new layer) + {SLACK:,} B = {limit:,} B"
    )
    for direction in ("up", "down"):
        label = f"  wire {direction}"
        if isinstance(ours, Flow):
            moved = getattr(ours, direction)
            figure = f"{moved:,} B = {moved / layer.zstd:.3f}x the compressed layer"
            print(f"{label:<24}{figure:<46}{verdict(moved <= limit)}")
        else:
            print(f"{label:<24}{'n/a':<46}FAIL")
    if isinstance(ours, Sent):
        print(
            f"  (airgap send --json: bytes_on_wire {ours.reported:,}; payload {ours.payload:,} B "
            f"= {ours.payload / layer.age:.3f}x the layer through zstd -1 | age, the rest of "
            f"the archive included; {ours.omitted} layers left out)"
        )
    if isinstance(ours, Flow) and isinstance(book_flow, Flow):
        figure = f"{ours.seconds:.1f} / {book_flow.seconds:.1f} s = "
        figure += f"{ours.seconds / book_flow.seconds:.2f}x"
        print(f"{'  time vs book':<24}{figure:<46}(ratio; the issue sets no limit)")
    else:
        print(f"{'  time vs book':<24}n/a")
    print("context, 3 (airgap send --full of v2):")
    if isinstance(full, Sent) and isinstance(ours, Flow):
        print(
            f"  wire up {full.up:,} B, down {full.down:,} B: the thin send moved "
            f"{ours.up / full.up:.4f}x of it up\n"
            f"  time {full.seconds:.1f} s: the thin flow took {ours.seconds / full.seconds:.2f}x"
            + (
                f"; --full took {full.seconds / book_flow.seconds:.2f}x the book's"
                if isinstance(book_flow, Flow)
                else ""
            )
        )
    else:
        print(f"  n/a: {full if isinstance(full, str) else ours}")


def describe(work: Path) -> None:
    engine = docker_cli("version", "--format", "{{.Server.Version}}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rounds = "1 round" if ROUNDS == 1 else f"{ROUNDS} rounds, each flow's median shown"
    print(
        f"incremental benchmark: {os.cpu_count()} cores, Docker {engine}, loopback only, "
        f"data in {work}, load average {load} at start\n"
        f"update flows: {rounds} (AIRGAP_BENCH_ROUNDS); v2 is removed, untimed, before every "
        f"load, v1 stays; steps are wall time\n"
        f"v1 = the transfer benchmark's image, v2 = v1 + {UPDATE_BYTES / MB:.0f} MB of {SOURCE}"
    )


@contextlib.contextmanager
def servers(work: Path, keys: Path, meter: WireMeter) -> Iterator[tuple[Appliance, Server]]:
    signer = keys / "sender" / "signing.pub"
    with (
        vsftpd(work / "vsftpd") as ftpd,
        airgap_appliance(work / "appliance", trusted_signer=signer) as box,
    ):
        meter.watch("vsftpd", ftpd.port, ftpd.passive)
        meter.watch("airgap", box.server.port, box.server.passive)
        yield box, ftpd


def measure(work: Path) -> dict[str, Outcome]:
    keys = make_keys(work)
    with wire_meter() as meter, servers(work, keys, meter) as (box, ftpd):
        base = prepare(BIG, work, keys)
        ledgers = send_base(base, box, meter)
        base.tar.unlink()  # v1 is never removed again
        setup, layer = prepare_update(base, work, keys)
        phase = Phase(setup, box, ftpd, ledgers, layers(base.tag))
        results = run_rounds(phase, meter, ROUNDS)
    show_flows(results)
    judge(results, layer)
    return results


def main() -> int:
    started = time.perf_counter()
    problem = preflight()
    if problem:
        print(f"bench.incremental: {problem}", file=sys.stderr)
        return 1
    work = scratch()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    work.chmod(0o755)  # vsftpd's chroot below must not be writable by its user
    results: dict[str, Outcome] = {}
    try:
        remove(UPDATE_TAG)  # a killed run's; v1 cannot be removed while v2 is built on it
        describe(work)
        results = measure(work)
    except FAILURES as exc:
        print(f"bench.incremental: could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(*FAILURES):
            remove(UPDATE_TAG)
        shutil.rmtree(work, ignore_errors=True)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"\nbench.incremental took {time.perf_counter() - started:.0f} s (load {load})")
    failed = [name for name, outcome in results.items() if isinstance(outcome, str)]
    for name in failed:
        print(f"bench.incremental: {name} could not be run: {results[name]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
