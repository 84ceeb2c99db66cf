"""End-to-end transfer benchmark (issue 4): `airgap send` + `airgap fetch` beside today's ways.

    make bench-transfer              # as root; or: make bytecode, then python -m bench.transfer
    AIRGAP_BENCH_DIR=/big/disk make bench-transfer
    AIRGAP_BENCH_ROUNDS=1 make bench-transfer     # one round of the 1 GB flows, not three

One run moves a realistic image (about 1.3 GB: this machine's /usr/lib/x86_64-linux-gnu, its
JDKs and Python's standard library, three layers FROM scratch; built once, then kept) from the
Docker engine back into it, six ways, one after the other:

1. book: `docker save -o x.tar`, lftp `put` to vsftpd, lftp `get`, `docker load -i`;
2. expert: `docker save | zstd -1 -T0 | age -R | curl -T -` to vsftpd, and back with
   `curl | age -d | zstd -d | docker load` (fast, but loads before verifying anything);
3. floor: `docker save > /dev/null`, then `docker load -i` of a local tar;
4. airgap: `airgap send IMAGE --server ftps://sender@...` through `airgap serve --tls required`
   (encrypted to the receiver, signed, certificate pinned), the appliance's check and
   publication, then `airgap fetch --server ftps://receiver@...` (verify, decrypt, load).
5. bound: `docker save | zstd -1 -T0` into a local file, `zstd -d | docker load` back: no
   target of its own, it shows what the compression the wire target needs costs on this
   machine by itself, beside the floor (no encryption, hashing, network or check);
6. airgap over FTP: flow 4 through a second appliance with `--tls off`, `ftp://` URLs: still
   encrypted to the receiver and signed, over the plain FTP that flows 1 and 2 use, so the
   difference from flow 4 is what TLS on the control and data connections costs.

Each flow's time is the sum of its steps' wall times; the image is removed before every load
(untimed: it stands for the other side of the gap) and its id is checked after. Bytes on the
wire are the kernel's count of IP packets to and from each server's ports on `lo`
(bench.transfer_wire); the tar is the image's `docker save` size. Client peak RSS is GNU time's
%M of the `airgap send` and `airgap fetch` processes (see bench.transfer_flows). The servers
(vsftpd, the appliance, and the appliance without TLS) are child processes on 127.0.0.1
(bench.ftp_servers), data in tmpfs (/dev/shm) when there is room, as in bench.ftp.

Then the slow link: both servers throttled to 100 Mbit/s per transfer (vsftpd's
anon_max_rate, `airgap serve --max-rate`), flows 1 and 4 only, on a smaller image of the same
files (about 300 MB, each file cut to the same fraction; see bench.transfer_image) to keep the
run to a few minutes. The 1 GB flows run three rounds, each starting with the next flow, and
each flow's median round is shown (about ten minutes in all here; one round varied by up to
2x on this shared two-core machine); a busy machine shows in the load averages printed.

Targets (issue 4), printed as PASS/FAIL beside each figure: airgap's total at most 0.85x the
book's, 1.0x the expert's and 1.15x the floor (for flow 4, and then flow 6); bytes on the
wire each way at most 0.45x the tar; send and fetch peak RSS under 250 MB; on the slow link at
least 2x faster than the book.
The exit status is 1 when a flow could not be run at all (its figures are then FAIL), else 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench.ftp_servers import ServerUnavailable, airgap_appliance, vsftpd
from bench.transfer_flows import (
    AIRGAP,
    Flow,
    FlowFailed,
    Setup,
    airgap,
    book,
    bound,
    expert,
    floor,
)
from bench.transfer_image import BIG, SMALL, DockerError, ImageSpec, ensure, image_id, restore
from bench.transfer_image import docker as docker_cli
from bench.transfer_image import layer_count as layers
from bench.transfer_wire import WireMeter, wire_meter

GIB, MB = 1 << 30, 1e6
SLOW_RATE = 12_500_000  # bytes per second: 100 Mbit/s
NEEDED = 6 * GIB  # four tars of the big image: reference, book sent, vsftpd copy, book received
TOOLS = ("docker", "lftp", "curl", "age", "zstd")
ROUNDS = int(os.environ.get("AIRGAP_BENCH_ROUNDS", "3"))  # of the 1 GB flows; the median is shown
FAILURES = (FlowFailed, DockerError, ServerUnavailable, OSError, subprocess.SubprocessError)

Outcome = Flow | str  # a measured flow, or why it could not be run


def scratch() -> Path:
    if "AIRGAP_BENCH_DIR" in os.environ:
        base = Path(os.environ["AIRGAP_BENCH_DIR"])
    else:
        base = Path("/dev/shm") if shutil.disk_usage("/dev/shm").free > NEEDED else Path("/tmp")
    return base / "airgap-bench-transfer"


def make_keys(work: Path) -> Path:
    keys = work / "keys"
    for side in ("sender", "receiver"):
        subprocess.run(
            [*AIRGAP, "keygen", "--out", str(keys / side)], check=True, capture_output=True
        )
    return keys


def prepare(spec: ImageSpec, work: Path, keys: Path) -> Setup:
    """The image (built unless cached) and its reference tar, saved untimed (warms the cache)."""
    start = time.perf_counter()
    built = ensure(spec)
    found = image_id(spec.tag)
    assert found is not None
    directory = work / spec.tag.rpartition(":")[2]
    directory.mkdir(parents=True)
    tar = directory / "image.tar"
    docker_cli("save", "-o", str(tar), spec.tag)
    how = f"built in {time.perf_counter() - start:.0f} s" if built else "cached"
    print(
        f"image {spec.tag} ({how}): {layers(spec.tag)} layers FROM scratch, "
        f"docker save tar {tar.stat().st_size / MB:,.0f} MB, id {found[:19]}"
    )
    return Setup(directory, spec.tag, found, tar, keys)


def measured(meter: WireMeter, server: str, flow: Callable[[], Flow]) -> Flow:
    """The flow, with its bytes counted on the wire to and from ``server`` where possible."""
    before = meter.read(server)
    result = flow()
    if not meter.available:
        return result
    after = meter.read(server)
    up, down = after[0] - before[0], after[1] - before[1]
    return dataclasses.replace(result, up=up, down=down, counted=True)


def attempt(setup: Setup, flow: Callable[[], Flow]) -> Outcome:
    """The flow, or why it failed; either way the image is left as it was found."""
    try:
        return flow()
    except FAILURES as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        restore(setup.tag, setup.image_id, setup.tar)


def run_flows(
    setup: Setup, meter: WireMeter, *, rate: int, names: tuple[str, ...], rounds: int = 1
) -> dict[str, Outcome]:
    """The servers up for the whole phase (throttled when ``rate``), the flows one by one.

    With several rounds, each flow's figures are those of its median round.
    """
    results: dict[str, Outcome] = {}
    flows: dict[str, Callable[[], Flow]] = {
        "floor": partial(floor, setup),
        "bound": partial(bound, setup),
    }
    with contextlib.ExitStack() as stack:
        try:
            ftpd = stack.enter_context(vsftpd(setup.work / "vsftpd", max_rate=rate))
        except ServerUnavailable as exc:
            results |= {"book": f"vsftpd: {exc}", "expert": f"vsftpd: {exc}"}
        else:
            key = f"vsftpd_{setup.work.name}"
            meter.watch(key, ftpd.port, ftpd.passive)
            flows["book"] = partial(measured, meter, key, partial(book, setup, ftpd))
            flows["expert"] = partial(measured, meter, key, partial(expert, setup, ftpd))
        signer = setup.keys / "sender" / "signing.pub"
        for name, tls in (("airgap", True), ("airgap-ftp", False)):
            if name not in names:
                continue
            try:
                box = stack.enter_context(
                    airgap_appliance(
                        setup.work / f"appliance-{name}",
                        trusted_signer=signer,
                        max_rate=rate,
                        tls=tls,
                    )
                )
            except ServerUnavailable as exc:
                results[name] = f"airgap serve{'' if tls else ' --tls off'}: {exc}"
            else:
                key = f"{name.replace('-', '_')}_{setup.work.name}"
                meter.watch(key, box.server.port, box.server.passive)
                flows[name] = partial(measured, meter, key, partial(airgap, setup, box))
        runs: dict[str, list[Outcome]] = {name: [] for name in names if name in flows}
        for number in range(rounds):
            turn = number % len(names)  # each round starts with the next flow
            for name in [n for n in names[turn:] + names[:turn] if n in flows]:
                done = attempt(setup, flows[name])
                runs[name].append(done)
                said = f"{done.seconds:.1f} s" if isinstance(done, Flow) else f"FAILED: {done}"
                print(f"  ... round {number + 1}, {name}: {said}", file=sys.stderr, flush=True)
    results |= {name: median(outcomes) for name, outcomes in runs.items()}
    return {name: results[name] for name in names}


def median(outcomes: list[Outcome]) -> Outcome:
    """The round with the median total (the lower one of an even count); any failure wins."""
    for outcome in outcomes:
        if isinstance(outcome, str):
            return outcome
    flows = sorted((o for o in outcomes if isinstance(o, Flow)), key=lambda flow: flow.seconds)
    return flows[(len(flows) - 1) // 2]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


LABELS = {
    "book": "1 book    docker save -o, lftp put/get, docker load -i",
    "expert": "2 expert  save | zstd -1 -T0 | age | curl, curl | age -d | zstd -d | load",
    "floor": "3 floor   docker save > /dev/null, docker load -i local tar",
    "airgap": "4 airgap  airgap send + publish + airgap fetch, FTPS, encrypted, signed",
    "bound": "5 bound   save | zstd -1 -T0 > file, zstd -d < file | load (no target)",
    "airgap-ftp": "6 airgap  as 4, over plain FTP as 1 and 2 go (--tls off): encrypted, signed",
}


def show_flows(results: dict[str, Outcome]) -> None:
    print(f"  {'':<10}{'wall':>9}{'up MB':>9}{'down MB':>9}   steps (s)")
    for name, outcome in results.items():
        number, label = LABELS[name].split(None, 1)
        print(f"  {number} {label}")
        if isinstance(outcome, str):
            print(f"  {'':<10}FAILED: {outcome}")
            continue
        steps = ", ".join(f"{s.name} {s.seconds:.1f}" for s in outcome.steps)
        print(
            f"  {'':<10}{outcome.seconds:7.1f} s{outcome.up / MB:9,.0f}{outcome.down / MB:9,.0f}"
            f"   {steps}"
        )
    counted = [o.counted for o in results.values() if isinstance(o, Flow) and (o.up or o.down)]
    if counted and not all(counted):
        print("  (up/down: sizes of the files moved; nft was not available to count the wire)")


def ratio_line(label: str, ours: float, theirs: float, unit: str, target: str, ok: bool) -> None:
    ratio = ours / theirs if theirs else float("inf")
    figure = f"{ours:,.1f} / {theirs:,.1f} {unit} = {ratio:.2f}x"
    print(f"  {label:<22}{figure:<34}target {target:<9}{verdict(ok)}")


def missing(label: str, target: str) -> None:
    print(f"  {label:<22}{'n/a':<34}target {target:<9}FAIL")


def judge_times(results: dict[str, Outcome], flow: str) -> None:
    ours = results.get(flow)
    for name, limit in (("book", 0.85), ("expert", 1.0), ("floor", 1.15)):
        theirs, target = results.get(name), f"<={limit:.2f}x"
        if isinstance(ours, Flow) and isinstance(theirs, Flow):
            ok = ours.seconds <= limit * theirs.seconds
            ratio_line(f"time vs {name}", ours.seconds, theirs.seconds, "s", target, ok)
        else:
            missing(f"time vs {name}", target)


def judge_fast(setup: Setup, results: dict[str, Outcome]) -> None:
    print("targets for 4 (airgap):")
    ours = results.get("airgap")
    judge_times(results, "airgap")
    least, floored = results.get("bound"), results.get("floor")
    if isinstance(least, Flow) and isinstance(floored, Flow):
        print(
            f"  (bound vs floor: {least.seconds:.1f} / {floored.seconds:.1f} s = "
            f"{least.seconds / floored.seconds:.2f}x: what compressing to zstd -1 alone costs here,"
            " with no encryption, hashing, network or check)"
        )
    tar = setup.tar.stat().st_size
    for direction in ("up", "down"):
        label = f"wire {direction} vs tar"
        if isinstance(ours, Flow):
            moved = getattr(ours, direction)
            ratio_line(label, moved / MB, tar / MB, "MB", "<=0.45x", moved <= 0.45 * tar)
        else:
            missing(label, "<=0.45x")
    if isinstance(ours, Flow):
        cpu = ", ".join(f"{s.name} {s.cpu_seconds:.1f} s" for s in ours.steps if s.cpu_seconds)
        print(f"  (airgap client CPU, user+sys, dockerd not included: {cpu})")
    for step in ("send", "fetch"):
        label = f"airgap {step} peak RSS"
        if isinstance(ours, Flow):
            rss = ours.step(step).max_rss_mb
            print(f"  {label:<22}{f'{rss:.0f} MB':<34}target {'<250 MB':<9}{verdict(rss < 250)}")
        else:
            missing(label, "<250 MB")
    if "airgap-ftp" in results:
        print("the time targets for 6 (airgap over plain FTP, the transport of 1 and 2):")
        judge_times(results, "airgap-ftp")
        plain = results["airgap-ftp"]
        if isinstance(ours, Flow) and isinstance(plain, Flow):
            print(
                f"  (what TLS costs flow 4, median against median: "
                f"{ours.seconds - plain.seconds:+.1f} s; "
                f"client CPU {_cpu(ours) - _cpu(plain):+.1f} s)"
            )


def _cpu(flow: Flow) -> float:
    return sum(step.cpu_seconds for step in flow.steps)


def judge_slow(setup: Setup, results: dict[str, Outcome]) -> None:
    ours, theirs = results.get("airgap"), results.get("book")
    if isinstance(theirs, Flow):
        put, get = theirs.step("put").seconds, theirs.step("get").seconds
        print(
            f"  (the book's lftp through throttled vsftpd: put {theirs.up / MB / put:.1f} MB/s, "
            f"get {theirs.down / MB / get:.1f} MB/s)"
        )
    if isinstance(ours, Flow):
        tar = setup.tar.stat().st_size
        print(
            f"  (airgap on the wire: {ours.up / tar:.2f}x the tar up, {ours.down / tar:.2f}x down)"
        )
    if isinstance(ours, Flow) and isinstance(theirs, Flow):
        ok = theirs.seconds >= 2 * ours.seconds
        ratio_line("speed-up over book", theirs.seconds, ours.seconds, "s", ">=2x", ok)
    else:
        missing("speed-up over book", ">=2x")


def describe(work: Path) -> None:
    engine = docker_cli("version", "--format", "{{.Server.Version}}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rounds = "1 round" if ROUNDS == 1 else f"{ROUNDS} rounds, each flow's median shown"
    print(
        f"transfer benchmark: {os.cpu_count()} cores, Docker {engine}, loopback only, "
        f"data in {work}, load average {load} at start\n"
        f"1 GB flows: {rounds} (AIRGAP_BENCH_ROUNDS); the image is removed, untimed, "
        "before every load; steps are wall time"
    )
    engines = _process_count("dockerd")
    if engines > 1:  # with two idle 26.1 engines, airgap took 24.7 s; without, 22.6 s
        print(
            f"warning: {engines} Docker engines run on this machine; the others' background "
            "work skews the figures (stop the test matrix's: bash .ci/engines.sh stop)"
        )


def _process_count(name: str) -> int:
    count = 0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            count += comm.read_text().strip() == name
    return count


def preflight() -> str | None:
    if os.geteuid() != 0:
        return "run as root (vsftpd chroots; nft counts the wire)"
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        return f"missing {', '.join(absent)} (apt-get install lftp curl age zstd docker.io)"
    return None


def fast_phase(work: Path, keys: Path, meter: WireMeter) -> dict[str, Outcome]:
    setup = prepare(BIG, work, keys)
    names = ("book", "expert", "floor", "airgap", "bound", "airgap-ftp")
    results = run_flows(setup, meter, rate=0, names=names, rounds=ROUNDS)
    show_flows(results)
    judge_fast(setup, results)
    shutil.rmtree(setup.work, ignore_errors=True)
    return results


def slow_phase(work: Path, keys: Path, meter: WireMeter) -> dict[str, Outcome]:
    print(
        f"\nslow link: vsftpd and airgap serve each throttled to {SLOW_RATE / MB:.1f} MB/s "
        "(100 Mbit/s) per transfer; flows 1 and 4 only.\nTo keep the run short, a smaller "
        f"image: the same files, each cut to {SMALL.fraction:.1%} of its bytes (64 KiB pieces "
        "spread through it), so it compresses as the big one does."
    )
    setup = prepare(SMALL, work, keys)
    results = run_flows(setup, meter, rate=SLOW_RATE, names=("book", "airgap"))
    show_flows(results)
    judge_slow(setup, results)
    shutil.rmtree(setup.work, ignore_errors=True)
    return results


def main() -> int:
    started = time.perf_counter()
    problem = preflight()
    if problem:
        print(f"bench.transfer: {problem}", file=sys.stderr)
        return 1
    work = scratch()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    work.chmod(0o755)  # vsftpd's chroot below must not be writable by its user
    results: dict[str, Outcome] = {}
    try:
        describe(work)
        keys = make_keys(work)
        with wire_meter() as meter:
            fast = fast_phase(work, keys, meter)
            slow = slow_phase(work, keys, meter)
        results = {**fast, **{f"slow {k}": v for k, v in slow.items()}}
    except FAILURES as exc:
        print(f"bench.transfer: could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"\nbench.transfer took {time.perf_counter() - started:.0f} s (load average {load})")
    failed = [name for name, outcome in results.items() if isinstance(outcome, str)]
    for name in failed:
        print(f"bench.transfer: {name} could not be run: {results[name]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
