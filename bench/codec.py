"""Bundle codec benchmark: airgap send/fetch against `zstd -1 -T0 | age`, in the same run.

    make bench                       # or: .venv/bin/python -m bench.codec
    AIRGAP_BENCH_DIR=/big/disk make bench

Builds a 1 GiB corpus of real binaries (a tar of /usr/lib/x86_64-linux-gnu and /usr/lib/jvm,
cut at 1 GiB), then times, each in its own process:
  * the shell pipeline `zstd -1 -T0 | age -r` and back `age -d | zstd -d`, writing to files;
  * `airgap send --file` (tar, sha256, zstd, age, segment hashes, manifest, signature) and
    `airgap fetch` (signature, segment hashes, age, zstd, sha256, unpack), also to files;
  * the compression ratio and encode speed of the zstd levels we considered for the default;
  * peak RSS of send and fetch with a 2 GiB payload.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

GIB = 1 << 30
WORK = Path(os.environ.get("AIRGAP_BENCH_DIR", "/tmp/airgap-bench"))
AIRGAP = [sys.executable, "-m", "airgap.client"]
SOURCES = ["usr/lib/x86_64-linux-gnu", "usr/lib/jvm", "usr/lib", "usr/share"]


@dataclass(frozen=True)
class Run:
    seconds: float
    max_rss_mb: float


def timed(cmd: list[str] | str, *, env: dict[str, str] | None = None) -> Run:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, shell=isinstance(cmd, str), env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench: {cmd!r} failed with {proc.returncode}")
    return Run(seconds, usage.ru_maxrss / 1024)


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


def fresh(name: str) -> Path:
    path = WORK / name
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


def airgap_round_trip(
    files: list[Path], key_dir: Path, level: int | None = None
) -> tuple[Run, Run, int]:
    drop, out, state = fresh("drop"), fresh("out"), fresh("state")
    send = [
        *AIRGAP,
        "send",
        "--to",
        str(drop),
        "-R",
        str(key_dir / "recipient.txt"),
        "--sign-key",
        str(key_dir / "signing.key"),
    ]
    if level is not None:
        send += ["--level", str(level)]
    for f in files:
        send += ["--file", str(f)]
    enc = timed(send)
    payload = sum(p.stat().st_size for p in drop.glob("*.tar.zst.age"))
    dec = timed(
        [
            *AIRGAP,
            "fetch",
            "--from",
            str(drop),
            "-i",
            str(key_dir / "identity.txt"),
            "--trust",
            str(key_dir / "signing.pub"),
            "--output-dir",
            str(out),
            "--state-dir",
            str(state),
        ]
    )
    shutil.rmtree(out)
    return enc, dec, payload


def shell_round_trip(path: Path, key_dir: Path) -> tuple[Run, Run, int]:
    recipient = (key_dir / "recipient.txt").read_text().strip()
    enc_file, dec_file = WORK / "shell.tar.zst.age", WORK / "shell.tar"
    enc = timed(f"zstd -q -1 -T0 -c '{path}' | age -r {recipient} > '{enc_file}'")
    dec = timed(
        f"age -d -i '{key_dir / 'identity.txt'}' '{enc_file}' | zstd -q -d -c > '{dec_file}'"
    )
    size = enc_file.stat().st_size
    enc_file.unlink()
    dec_file.unlink()
    return enc, dec, size


def row(name: str, ours: float, theirs: float, unit: str, target: str, ok: bool) -> None:
    ratio = ours / theirs if theirs else float("inf")
    print(
        f"{name:<34} {ours:>9.1f} {unit:<5} vs {theirs:>9.1f} {unit:<5} "
        f"= {ratio:5.2f}x   target {target:<18} {'PASS' if ok else 'FAIL'}"
    )


def main() -> None:
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    data = corpus()
    size = data.stat().st_size
    key_dir = keys()
    print(f"corpus: {size / GIB:.2f} GiB of real files in {data}; {os.cpu_count()} cores\n")
    # Warm the page cache so both sides read the corpus from memory.
    timed(f"cat '{data}' > /dev/null")
    s_enc, s_dec, s_size = shell_round_trip(data, key_dir)
    a_enc, a_dec, a_size = airgap_round_trip([data], key_dir)
    mb = size / 1e6
    print("throughput (MB/s of plaintext), airgap vs `zstd -1 -T0 | age -r` / `age -d | zstd -d`:")
    ours_enc, shell_enc = mb / a_enc.seconds, mb / s_enc.seconds
    ours_dec, shell_dec = mb / a_dec.seconds, mb / s_dec.seconds
    row(
        "encode (airgap send)",
        ours_enc,
        shell_enc,
        "MB/s",
        ">=0.8x, >=300 MB/s",
        ours_enc >= 0.8 * shell_enc and ours_enc >= 300,
    )
    row("decode (airgap fetch)", ours_dec, shell_dec, "MB/s", ">=0.8x", ours_dec >= 0.8 * shell_dec)
    print(
        f"{'payload size / plaintext':<34} {a_size / size:>9.3f}       vs {s_size / size:>9.3f} "
        "(shell, zstd -1)"
    )
    print("\nzstd levels considered for the default (airgap send, same corpus):")
    for level in (1, 2, 3):
        enc, _, payload = airgap_round_trip([data], key_dir, level)
        print(f"  level {level}: ratio {payload / size:.3f}, encode {mb / enc.seconds:6.1f} MB/s")
    second = WORK / "corpus-copy.tar"
    if not second.exists():
        os.link(data, second)
    big_enc, big_dec, _ = airgap_round_trip([data, second], key_dir)
    print(
        f"\npeak RSS with a {2 * size / GIB:.0f} GiB payload: send {big_enc.max_rss_mb:.0f} MB, "
        f"fetch {big_dec.max_rss_mb:.0f} MB (target < 150 MB: "
        f"{'PASS' if max(big_enc.max_rss_mb, big_dec.max_rss_mb) < 150 else 'FAIL'})"
    )
    print(f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
