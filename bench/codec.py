"""Bundle codec benchmark: airgap against `zstd -1 -T0 | age -r` and back, in the same run.

    make bench                       # or: make bytecode; .venv/bin/python -m bench.codec
    AIRGAP_BENCH_DIR=/big/disk make bench

`make bytecode` compiles the modules as a wheel's install does: where PYTHONDONTWRITEBYTECODE
is set, each process of a benchmark would otherwise compile airgap again (0.13 s a start here).

The corpus is 1 GiB of real binaries and text (a tar of /usr/lib/x86_64-linux-gnu and
/usr/lib/jvm, cut at 1 GiB), read from the page cache. Outputs go to tmpfs (/dev/shm) when
there is room, so both sides are measured on CPU, not on the disk's writeback mood. A decode
writes its plaintext in place over a file of the corpus's size that both sides keep from run to
run (the shell with `1<>`): on this VM, the first touch of a new page of tmpfs costs from 0.6 to
4 s of kernel time a GiB, from one run to the next, which drowned both pipelines' own cost. Each
output is then checked against the corpus's sha256, untimed. Every figure is the median of five
runs, each in its own process, the sides taking turns:

* pipeline: the bundle pipeline on the corpus bytes as plaintext, as for an image (plaintext
  sha256, zstd, age, payload sha256 and segment hashes, manifest, signature) and back
  (signature, segment hashes, age, zstd, plaintext sha256), against the shell pipeline;
* send/fetch --file: the CLI, which also wraps the file in a tar and hashes it on its own;
* the compression ratio and speed of the zstd levels considered for the default;
* peak RSS of `airgap send` and `airgap fetch` with a 2 GiB payload.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bench.peak import measured, peak_mb

GIB = 1 << 30
WORK = Path(os.environ.get("AIRGAP_BENCH_DIR", "/tmp/airgap-bench"))
SCRATCH = Path("/dev/shm/airgap-bench") if shutil.disk_usage("/dev/shm").free > 6 * GIB else WORK
PY = [sys.executable]
AIRGAP = [*PY, "-m", "airgap.client"]
PIPELINE = [*PY, "-m", "bench.pipeline"]
SOURCES = ["usr/lib/x86_64-linux-gnu", "usr/lib/jvm", "usr/lib", "usr/share"]
ROUNDS = 5


@dataclass(frozen=True)
class Run:
    seconds: float
    max_rss_mb: float
    cpu_seconds: float  # user + system, every thread and child


def timed(cmd: list[str] | str) -> Run:
    """One command in its own process: wall time and its peak RSS (bench.peak)."""
    subprocess.run(["sync"], check=True)
    record = WORK / "peak.rss"
    argv = ["/bin/bash", "-o", "pipefail", "-c", cmd] if isinstance(cmd, str) else cmd
    start = time.perf_counter()
    proc = subprocess.Popen(
        measured(argv, record), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    errors = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {cmd!r} failed: {errors.decode(errors='replace')}")
    return Run(seconds, peak_mb(record, usage), usage.ru_utime + usage.ru_stime)


def median(runs: list[Run]) -> Run:
    return Run(
        statistics.median(r.seconds for r in runs),
        max(r.max_rss_mb for r in runs),
        statistics.median(r.cpu_seconds for r in runs),
    )


def corpus(size: int = GIB) -> Path:
    path = WORK / "corpus.tar"
    if path.exists() and path.stat().st_size == size:
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    present = [s for s in SOURCES if Path("/", s).exists()]
    with path.open("wb") as out:
        tar = subprocess.Popen(
            ["tar", "-C", "/", "-cf", "-", *present],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert tar.stdout is not None
        left = size
        while left and (chunk := tar.stdout.read(min(left, 1 << 20))):
            out.write(chunk)
            left -= len(chunk)
        tar.kill()
        tar.wait()
    if path.stat().st_size != size:
        raise SystemExit(f"bench: could not gather {size} bytes of real files for the corpus")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def sink(name: str, like: Path) -> Path:
    """A file that a decode writes over in place: made once, of ``like``'s size, and zeros,
    so that a decode that wrote nothing cannot pass the check."""
    path = SCRATCH / name
    if not path.exists() or path.stat().st_size != like.stat().st_size:
        SCRATCH.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            zero_fill(out, like.stat().st_size)
    return path


def zero_fill(out: BinaryIO, size: int) -> None:
    zeros = bytes(1 << 20)
    while size:
        size -= out.write(zeros[: min(size, len(zeros))])


def decoded(path: Path, corpus: Path, digest: str) -> None:
    """Untimed: the decode gave back the corpus; then zeros again for the next one."""
    if path.stat().st_size != corpus.stat().st_size or sha256_of(path) != digest:
        raise SystemExit(f"bench: {path.name} is not the corpus")
    with path.open("r+b") as out:
        zero_fill(out, corpus.stat().st_size)


def fresh(name: str) -> Path:
    path = SCRATCH / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def keys() -> Path:
    directory = WORK / "keys"
    if not (directory / "identity.txt").exists():
        subprocess.run(
            [*AIRGAP, "keygen", "--out", str(directory), "--force"], check=True, capture_output=True
        )
    return directory


Once = Callable[[], tuple[Run, Run, int]]


def rounds(*sides: Once) -> list[tuple[Run, Run, int]]:
    """Each side once per round, in turn, so that a machine that speeds up or slows down
    during the benchmark (shared hosts do) weighs on every side alike."""
    results = [[once() for once in sides] for _ in range(ROUNDS)]
    return [
        (median([r[i][0] for r in results]), median([r[i][1] for r in results]), results[0][i][2])
        for i in range(len(sides))
    ]


def shell_once(path: Path, key_dir: Path, digest: str) -> tuple[Run, Run, int]:
    recipient = (key_dir / "recipient.txt").read_text().strip()
    out = fresh("shell")
    enc_file, dec_file = out / "x.tar.zst.age", sink("shell.tar", path)
    enc = timed(f"zstd -q -1 -T0 -c '{path}' | age -r {recipient} > '{enc_file}'")
    dec = timed(
        f"set -o pipefail; age -d -i '{key_dir}/identity.txt' '{enc_file}' | zstd -q -d -c "
        f"1<> '{dec_file}'"
    )
    decoded(dec_file, path, digest)
    return enc, dec, enc_file.stat().st_size


def pipeline_once(path: Path, key_dir: Path, digest: str, level: int = 1) -> tuple[Run, Run, int]:
    drop, plain = fresh("drop"), sink("pipeline.tar", path)
    enc = timed([*PIPELINE, "encode", str(path), str(drop), str(key_dir), str(level)])
    size = sum(p.stat().st_size for p in drop.glob("*.tar.zst.age"))
    dec = timed([*PIPELINE, "decode", str(drop), str(key_dir), str(plain)])
    decoded(plain, path, digest)
    return enc, dec, size


def cli_once(files: list[Path], key_dir: Path) -> tuple[Run, Run, int]:
    drop, out, state = fresh("drop"), fresh("out"), fresh("state")
    send = [*AIRGAP, "send", "--to", str(drop), "-R", str(key_dir / "recipient.txt")]
    send += ["--sign-key", str(key_dir / "signing.key")]
    for f in files:
        send += ["--file", str(f)]
    enc = timed(send)
    size = sum(p.stat().st_size for p in drop.glob("*.tar.zst.age"))
    fetch = [*AIRGAP, "fetch", "--from", str(drop), "-i", str(key_dir / "identity.txt")]
    fetch += ["--trust", str(key_dir / "signing.pub"), "--output-dir", str(out)]
    dec = timed([*fetch, "--state-dir", str(state)])
    return enc, dec, size


def row(name: str, ours: float, theirs: float, target: str, ok: bool) -> None:
    print(
        f"  {name:<26} {ours:7.1f} MB/s   shell {theirs:7.1f} MB/s   = {ours / theirs:4.2f}x"
        f"   target {target:<20} {'PASS' if ok else 'FAIL'}"
    )


def main() -> None:
    data = corpus()
    size = data.stat().st_size
    mb = size / 1e6
    key_dir = keys()
    with data.open("rb") as warm:  # into the page cache, for both sides alike
        while warm.read(1 << 24):
            pass
    print(
        f"corpus: {size / GIB:.2f} GiB of real files; {os.cpu_count()} cores; "
        f"outputs in {SCRATCH}; median of {ROUNDS} runs\n"
    )

    digest = sha256_of(data)
    (s_enc, s_dec, s_size), (p_enc, p_dec, p_size), (c_enc, c_dec, _) = rounds(
        lambda: shell_once(data, key_dir, digest),
        lambda: pipeline_once(data, key_dir, digest),
        lambda: cli_once([data], key_dir),
    )
    shell_enc, shell_dec = mb / s_enc.seconds, mb / s_dec.seconds
    print("throughput, MB/s of plaintext (shell: `zstd -1 -T0 | age -r`, `age -d | zstd -d`):")
    ours = mb / p_enc.seconds
    row(
        "pipeline encode",
        ours,
        shell_enc,
        ">=0.8x, >=300 MB/s",
        ours >= 0.8 * shell_enc and ours >= 300,
    )
    ours = mb / p_dec.seconds
    row("pipeline decode", ours, shell_dec, ">=0.8x", ours >= 0.8 * shell_dec)
    row("airgap send --file", mb / c_enc.seconds, shell_enc, "(information)", True)
    row("airgap fetch", mb / c_dec.seconds, shell_dec, "(information)", True)
    print(f"  payload/plaintext: airgap {p_size / size:.3f}, shell (zstd -1) {s_size / size:.3f}")
    # On few cores the wall time is bounded by CPU time / cores: our side also hashes every
    # byte of plaintext and payload (sha256), which the shell pipelines do not.
    print(
        f"  CPU seconds (user+sys): pipeline encode {p_enc.cpu_seconds:.2f}, shell "
        f"{s_enc.cpu_seconds:.2f}; pipeline decode {p_dec.cpu_seconds:.2f}, shell "
        f"{s_dec.cpu_seconds:.2f}"
    )

    print("\nzstd levels considered for the default (pipeline, one run each):")
    for level in (1, 2, 3):
        enc, _, payload = pipeline_once(data, key_dir, digest, level)
        print(f"  level {level}: ratio {payload / size:.3f}, encode {mb / enc.seconds:6.1f} MB/s")

    second = WORK / "corpus-copy.tar"
    if not second.exists():
        os.link(data, second)
    big_enc, big_dec, _ = cli_once([data, second], key_dir)
    worst = max(big_enc.max_rss_mb, big_dec.max_rss_mb)
    print(
        f"\npeak RSS with a 2 GiB payload: airgap send {big_enc.max_rss_mb:.0f} MB, "
        f"airgap fetch {big_dec.max_rss_mb:.0f} MB   target < 150 MB   "
        f"{'PASS' if worst < 150 else 'FAIL'}"
    )
    shutil.rmtree(SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()
