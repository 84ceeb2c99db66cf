"""The transfer benchmark's images (real binaries and text, FROM scratch) and its docker calls.

Each image is this machine's shared libraries, its JDKs and Python's standard library in three
layers (one COPY each), built from a context that is streamed to `docker build -` as a tar made
here, straight from /usr/lib: nothing is copied to disk. The slow-link image has the same files
(names, modes, links), each cut to the same fraction of its bytes, taken as 64 KiB pieces spread
evenly through it: a whole-file subset of ~300 MB would hang on which of a few 50-150 MB files
(JDK modules, libLLVM, src.zip) it happens to hold, and compress quite unlike the big image;
pieces of every file keep its mix, and its zstd ratio, by construction. An image whose tag
exists is not built again (the tags are kept between runs; drop them with
`docker rmi airgap-bench-transfer:1g airgap-bench-transfer:300m`).

Only the `docker` CLI is used, as a person would: never the SDK, which is airgap's own.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

REPO = "airgap-bench-transfer"
TREES = ("usr/lib/x86_64-linux-gnu", "usr/lib/jvm", "usr/lib/python3.11")
BUILD_TIMEOUT = 1800.0
DOCKER_TIMEOUT = 900.0


class DockerError(Exception):
    """A docker command failed; the message has its stderr."""


@dataclass(frozen=True)
class ImageSpec:
    tag: str
    fraction: float  # of every file's bytes; 1.0: the files whole


BIG = ImageSpec(f"{REPO}:1g", 1.0)
SMALL = ImageSpec(f"{REPO}:300m", 0.225)
PIECE = 64 * 1024


def docker(*args: str, timeout: float = DOCKER_TIMEOUT) -> str:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise DockerError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def image_id(ref: str) -> str | None:
    try:
        return docker("image", "inspect", "--format", "{{.Id}}", ref)
    except DockerError:
        return None


def layer_count(ref: str) -> int:
    return int(docker("image", "inspect", "--format", "{{len .RootFS.Layers}}", ref))


def remove(ref: str) -> None:
    """Remove the image (every tag of it): the receiving side does not have it."""
    found = image_id(ref)
    if found is not None:
        docker("rmi", "--force", found)
    if image_id(ref) is not None:
        raise DockerError(f"{ref} is still present after docker rmi")


def restore(tag: str, expected: str, tar: Path) -> None:
    """Put the image back from its saved tar if a failed flow left it absent or different."""
    if image_id(tag) == expected:
        return
    remove(tag)
    docker("load", "--input", str(tar))
    if image_id(tag) != expected:
        raise DockerError(f"{tag}: could not restore image {expected} from {tar}")


class _Pieces:
    """A readable view of ``fraction`` of a file: PIECE-byte runs, evenly spaced through it."""

    def __init__(self, handle: BinaryIO, size: int, fraction: float) -> None:
        stride, want = int(PIECE / fraction), math.ceil(size * fraction)
        self._handle, self._buffer = handle, b""
        self._pieces: list[tuple[int, int]] = []
        self.size = offset = 0
        while self.size < want and offset < size:
            length = min(PIECE, want - self.size, size - offset)
            self._pieces.append((offset, length))
            self.size += length
            offset += stride
        self._pieces.reverse()

    def read(self, limit: int = -1) -> bytes:
        while not self._buffer and self._pieces:
            offset, length = self._pieces.pop()
            self._handle.seek(offset)
            self._buffer = self._handle.read(length)
        count = len(self._buffer) if limit < 0 else limit
        chunk, self._buffer = self._buffer[:count], self._buffer[count:]
        return chunk


def _add_tree(tar: tarfile.TarFile, tree: str, fraction: float) -> None:
    """Every directory, link and regular file under /tree, in sorted walk order."""
    tar.add(f"/{tree}", arcname=tree, recursive=False)
    for top, dirs, files in os.walk(Path("/", tree)):
        dirs.sort()
        for name in [*sorted(files), *dirs]:
            path = Path(top, name)
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to("/")))
            if info.isreg():
                with path.open("rb") as handle:
                    source: BinaryIO | _Pieces = handle
                    if fraction < 1:
                        source = _Pieces(handle, info.size, fraction)
                        info.size = source.size
                    tar.addfile(info, source)
            elif info.isdir() or info.issym() or info.islnk():
                tar.addfile(info)  # sockets, fifos and devices are not image content


def build(spec: ImageSpec) -> None:
    trees = [tree for tree in TREES if Path("/", tree).is_dir()]
    if not trees:
        raise DockerError(f"none of {', '.join(TREES)} exists here: nothing to build from")
    dockerfile = "FROM scratch\n" + "".join(f"COPY {t} /{t}\n" for t in trees)
    dockerfile += 'LABEL org.airgap.bench="transfer"\n'
    proc = subprocess.Popen(
        ["docker", "build", "--quiet", "--tag", spec.tag, "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stderr is not None
    try:
        with tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(dockerfile)
            tar.addfile(info, io.BytesIO(dockerfile.encode()))
            for tree in trees:
                _add_tree(tar, tree, spec.fraction)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # docker gave up early; its stderr says why
    errors = proc.stderr.read().decode(errors="replace")
    if proc.wait(timeout=BUILD_TIMEOUT) != 0 or image_id(spec.tag) is None:
        raise DockerError(f"docker build of {spec.tag} failed: {errors.strip()}")


def ensure(spec: ImageSpec) -> bool:
    """Build the image unless its tag exists; whether it was built now."""
    if image_id(spec.tag) is not None:
        return False
    build(spec)
    return True
