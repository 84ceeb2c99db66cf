"""The incremental benchmark's update: the transfer benchmark's big image plus one new layer.

The new layer holds UPDATE_BYTES bytes of this machine's /usr/share (the base image has none of
it: its trees are under /usr/lib), whole files taken in turn from each directory of /usr/share,
each in sorted walk order, the last one cut to make the total exact. So it carries a bit of
everything there (text, scripts, wheels, fonts, icons, translations, compressed docs) and
compresses as real content does, which neither random bytes nor zeros would.

The image is built FROM the base with `docker build -` (a context streamed as a tar made here,
nothing copied to disk, no registry). The new layer's own tar is then cut out of a `docker save`
of the image by its diff id (the sha256 of the file is checked against it), and compressed with
`zstd -1` (airgap's default level) and encrypted with `age`, as the reference for the bytes an
update ought to cost. Only the `docker` CLI and Debian's tools are used, never airgap's code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.transfer_image import BUILD_TIMEOUT, DockerError, docker, image_id

SOURCE = Path("/usr/share")
UPDATE_BYTES = 10_000_000
UPDATE_TAG = "airgap-bench-incremental:v2"


@dataclass(frozen=True)
class Layer:
    """The update's new layer: its tar (as `docker save` holds it) and what it compresses to."""

    diff_id: str
    files: int
    content: int  # bytes of file content in it
    tar: int  # bytes of the layer tar
    zstd: int  # `zstd -1` of the tar
    age: int  # that, encrypted with `age -R` to the receiver


def _files(root: Path) -> Iterator[Path]:
    for top, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(top, name)
            if path.is_file() and not path.is_symlink():
                yield path


def pick(total: int = UPDATE_BYTES) -> list[tuple[Path, int]]:
    """Files of /usr/share, one from each of its directories in turn, and how much of each."""
    walks = [_files(d) for d in sorted(SOURCE.iterdir()) if d.is_dir() and not d.is_symlink()]
    picked: list[tuple[Path, int]] = []
    taken = 0
    while taken < total and walks:
        for walk in list(walks):
            path = next(walk, None)
            if path is None:
                walks.remove(walk)
                continue
            size = min(path.stat().st_size, total - taken)
            picked.append((path, size))
            taken += size
            if taken >= total:
                break
    if taken < total:
        raise DockerError(f"{SOURCE} holds only {taken} bytes of files, {total} wanted")
    return picked


def build_update(base: str, tag: str, files: list[tuple[Path, int]]) -> None:
    """``tag``: ``base`` plus one COPY of ``files`` (each cut to its size), no registry."""
    dockerfile = f'FROM {base}\nCOPY usr /usr\nLABEL org.airgap.bench="incremental"\n'
    proc = subprocess.Popen(
        ["docker", "build", "--quiet", "--tag", tag, "-"],
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
            for path, size in files:
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to("/")))
                info.size = size
                with path.open("rb") as handle:
                    tar.addfile(info, io.BytesIO(handle.read(size)))
        proc.stdin.close()
    except BrokenPipeError:
        pass  # docker gave up early; its stderr says why
    errors = proc.stderr.read().decode(errors="replace")
    if proc.wait(timeout=BUILD_TIMEOUT) != 0 or image_id(tag) is None:
        raise DockerError(f"docker build of {tag} failed: {errors.strip()}")


def top_diff_id(ref: str) -> str:
    """The diff id of the image's last layer."""
    found = docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", ref)
    return str(json.loads(found)[-1])


def cut_layer(saved: Path, diff_id: str, out: Path) -> None:
    """Write the layer file whose sha256 is ``diff_id`` from the `docker save` tar ``saved``."""
    with tarfile.open(saved) as tar:
        handle = tar.extractfile("manifest.json")
        assert handle is not None
        names = [name for entry in json.load(handle) for name in reversed(entry["Layers"])]
        for name in dict.fromkeys(names):  # the top layer is looked at first
            member = tar.extractfile(name)
            if member is None:
                continue
            digest = hashlib.sha256()
            with out.open("wb") as copy:
                while chunk := member.read(1 << 20):
                    digest.update(chunk)
                    copy.write(chunk)
            if f"sha256:{digest.hexdigest()}" == diff_id:
                return
    out.unlink(missing_ok=True)
    raise DockerError(f"{saved}: no layer file has the diff id {diff_id} (a compressed blob?)")


def measure_layer(
    layer: Path, diff_id: str, files: list[tuple[Path, int]], recipients: Path
) -> Layer:
    """Sizes of the layer tar, of its `zstd -1`, and of that through `age -R recipients`."""
    zstd = subprocess.run(
        ["zstd", "-q", "-1", "-c", str(layer)], capture_output=True, check=True, timeout=300
    ).stdout
    age = subprocess.run(
        ["age", "-R", str(recipients)], input=zstd, capture_output=True, check=True, timeout=300
    ).stdout
    content = sum(size for _, size in files)
    return Layer(diff_id, len(files), content, layer.stat().st_size, len(zstd), len(age))
