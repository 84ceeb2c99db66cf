"""Shared fixtures: key sets, the airgap CLI as a subprocess, and the Docker engine."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from airgap.client.keyfiles import write_key_files
from airgap.shared.keys import KeySet

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT.parent / "shared" / "testvectors" / "age"


@pytest.fixture(autouse=True)
def own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own ledgers (sent and imported): a ledger left by another test would make
    a send incremental towards a drop box that never saw the earlier bundle."""
    state = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


@pytest.fixture(scope="session")
def keyset() -> KeySet:
    return KeySet.generate()


@pytest.fixture
def keydir(tmp_path: Path, keyset: KeySet) -> Path:
    directory = tmp_path / "keys"
    write_key_files(directory, keyset.files(created=datetime.now(UTC)), force=False)
    return directory


def receiving(keydir: Path, state: Path) -> list[str | Path]:
    """The receiver's options of a fetch: its identity, the sender's key, its own ledger."""
    return ["-i", keydir / "identity.txt", "--trust", keydir / "signing.pub", "--state-dir", state]


@contextlib.contextmanager
def small_disk(path: Path, size: str, *, files: int = 0) -> Iterator[Path]:
    """A tmpfs of ``size`` (as mount takes it: "64k") at ``path``, holding at most ``files``
    files and directories, its own root one of them (0: no limit); the test is skipped when
    not root, as only root may mount."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    options = f"size={size}" + (f",nr_inodes={files}" if files else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def whole_text(path: Path) -> str:
    """The complete lines of a log another process appends to: a record being written as it
    is read (no newline yet) is left for the next look."""
    text = path.read_text()
    return text[: text.rfind("\n") + 1]


def run_airgap(
    args: Sequence[str | os.PathLike[str]],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, as a user runs it (no terminal: stdin is closed)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRGAP_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "airgap.client", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


def spawn_airgap(
    args: Sequence[str | os.PathLike[str]], *, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """The real CLI in the background, with run_airgap's environment, to kill it mid-way."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRGAP_")}
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "airgap.client", *map(str, args)],
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


BUSYBOX = Path("/bin/busybox")


_BUILT = 1_700_000_000  # the mtime of every file build_image puts in an image


def build_image(client: Any, tag: str, *, extra: str = "", files: Sequence[Path] = ()) -> Any:
    """A tiny image FROM scratch with Debian's static busybox; ``extra`` adds Dockerfile lines
    (which may COPY ``files``, put in the build context)."""
    if not BUSYBOX.exists():
        pytest.fail("busybox-static is not installed (/bin/busybox); .ci/run installs it")
    with tempfile.TemporaryDirectory() as context:
        for path, name in ((BUSYBOX, "busybox"), *((f, f.name) for f in files)):
            shutil.copy(path, Path(context) / name)
            # A layer's diff id covers its entries' mtimes: a copy's is now, and so is a
            # directory's that COPY makes (hence /busybox, not /bin/busybox). With either,
            # the same files built on two engines made unlike layers whenever the builds fell
            # in two seconds, and a test that needs the same base on both sides failed.
            os.utime(Path(context) / name, (_BUILT, _BUILT))
        (Path(context) / "Dockerfile").write_text(
            'FROM scratch\nCOPY busybox /busybox\nCMD ["/busybox", "echo", "hi"]\n' + extra
        )
        image, _ = client.images.build(path=context, tag=tag, rm=True)
    return image


@pytest.fixture
def tiny_image(docker_engine: DockerEngine) -> Iterator[Any]:
    client = docker_engine.client
    image = build_image(client, "airgap-smoke:1")
    yield image
    with contextlib.suppress(Exception):
        client.images.remove("airgap-smoke:1", force=True)


def connect_engine(host: str) -> Any:
    """A client of ``host`` ("default": what DOCKER_HOST or the default socket names); a
    failure under AIRGAP_REQUIRE_DOCKER=1, else a skip."""
    import docker

    try:
        if host == "default":
            client = docker.from_env(timeout=600)
        else:
            client = docker.DockerClient(base_url=host, timeout=600)
        client.ping()
    except Exception as exc:  # any failure to reach the engine means "no engine here"
        if os.environ.get("AIRGAP_REQUIRE_DOCKER") == "1":
            pytest.fail(
                f"AIRGAP_REQUIRE_DOCKER=1 but the Docker engine {host} does not answer: {exc}"
            )
        pytest.skip(f"no Docker engine {host}: {exc}")
    return client


@pytest.fixture(scope="session")
def docker_client() -> Iterator[object]:
    """A client of the default engine, for tests that need an engine but not each of them."""
    client = connect_engine("default")
    yield client
    client.close()


def engine_hosts() -> list[str]:
    """The engines of the matrix: AIRGAP_DOCKER_HOSTS ("default" and DOCKER_HOST values, as
    .ci/engines.sh prints them), or only the default engine when it is unset."""
    return os.environ.get("AIRGAP_DOCKER_HOSTS", "").split() or ["default"]


def _engine_id(host: str) -> str:
    return host.rsplit("/", 1)[-1].removesuffix(".sock").removeprefix("airgap-")


@dataclass(frozen=True)
class DockerEngine:
    """One engine of the matrix, and the environment that points the airgap CLI at it."""

    host: str
    client: Any

    @property
    def env(self) -> dict[str, str]:
        return {} if self.host == "default" else {"DOCKER_HOST": self.host}

    @property
    def containerd_store(self) -> bool:
        """Whether images live in the containerd image store (ids are manifest digests)."""
        status = self.client.info().get("DriverStatus") or []
        return ["driver-type", "io.containerd.snapshotter.v1"] in status


@pytest.fixture(scope="session", params=engine_hosts(), ids=_engine_id)
def docker_engine(request: pytest.FixtureRequest) -> Iterator[DockerEngine]:
    """Each engine of AIRGAP_DOCKER_HOSTS in turn (tests using it run once per engine)."""
    client = connect_engine(request.param)
    yield DockerEngine(request.param, client)
    client.close()
