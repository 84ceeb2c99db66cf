"""Incremental sends on every engine of the matrix: only the layers the far side lacks travel.

The sender and the receiver share one engine here, so "the far side" is the engine after the
images were removed from it: a thin bundle then finds its omitted layers only where an earlier
bundle brought them back.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from airgap.shared.layers import chain_ids
from tests.conftest import (
    DockerEngine,
    build_image,
    connect_engine,
    engine_hosts,
    run_airgap,
    small_disk,
)
from tests.server.conftest import Server, start_server

LAYER = 10 * 1024 * 1024
SUFFIXES = (".manifest.json.minisig", ".manifest.json", ".tar.zst.age")

pytestmark = pytest.mark.docker


@dataclass
class Chain:
    """``repo:1`` = busybox + 1 MiB, ``repo:2`` = 1 + 10 MiB, ``repo:3`` = 2 + 10 MiB, all
    random: each new layer is its own size compressed."""

    repo: str
    images: list[Any]

    def ref(self, version: int) -> str:
        return f"{self.repo}:{version}"


@contextlib.contextmanager
def chain_on(client: Any, tmp_path: Path, sizes: Sequence[int]) -> Iterator[Chain]:
    repo = f"airgap-inc-{uuid.uuid4().hex[:10]}"
    layers = []
    for version, size in enumerate(sizes, start=1):
        layers.append(tmp_path / f"layer{version}.bin")
        layers[-1].write_bytes(os.urandom(size))
    extra = ""
    images = []
    try:
        for version, path in enumerate(layers, start=1):
            extra += f"COPY {path.name} /{path.name}\n"
            images.append(build_image(client, f"{repo}:{version}", extra=extra, files=layers))
        yield Chain(repo, images)
    finally:
        _remove(client, repo)


@pytest.fixture
def chain(docker_engine: DockerEngine, tmp_path: Path) -> Iterator[Chain]:
    with chain_on(docker_engine.client, tmp_path, (1 << 20, LAYER, LAYER)) as made:
        yield made


def _remove(client: Any, repo: str) -> None:
    for version in (3, 2, 1, "base"):
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(f"{repo}:{version}", force=True)


class Side:
    """Where bundles go: a directory, or the appliance over FTPS."""

    def __init__(self, keydir: Path, tmp_path: Path, engine: DockerEngine) -> None:
        self.keydir, self.tmp, self.engine = keydir, tmp_path, engine
        self.drop = tmp_path / "drop"
        self.drop.mkdir(exist_ok=True)
        self.server: Server | None = None

    def where(self, role: str) -> list[str | Path]:
        return ["--to" if role == "sender" else "--from", self.drop]

    def env(self, role: str) -> dict[str, str]:
        return {"XDG_CACHE_HOME": str(self.tmp / "cache"), **self.engine.env}

    def send(self, *args: str | Path) -> dict[str, Any]:
        sent = run_airgap(
            [
                "send",
                *args,
                *self.where("sender"),
                "-R",
                self.keydir / "recipient.txt",
                "--sign-key",
                self.keydir / "signing.key",
                "--json",
            ],
            env=self.env("sender"),
        )
        assert sent.returncode == 0, sent.stderr
        summary: dict[str, Any] = json.loads(sent.stdout)
        self.published(summary["id"])
        return summary

    def published(self, bundle_id: str) -> None:
        pass

    def fetch(self, *ids: str, state: str = "state") -> subprocess.CompletedProcess[str]:
        return run_airgap(
            [
                "fetch",
                *ids,
                *self.where("receiver"),
                "-i",
                self.keydir / "identity.txt",
                "--trust",
                self.keydir / "signing.pub",
                "--state-dir",
                self.tmp / state,
                "--json",
            ],
            env=self.env("receiver"),
            timeout=300,
        )

    def manifest(self, bundle_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.drop / f"{bundle_id}.manifest.json").read_text())
        return data


class Appliance(Side):
    def __init__(self, keydir: Path, tmp_path: Path, engine: DockerEngine) -> None:
        super().__init__(keydir, tmp_path, engine)
        self.server = start_server(
            tmp_path / "root", "--tls", "required", "--trusted-signer", str(keydir / "signing.pub")
        )
        match = re.search(r"certificate (sha256:[0-9a-f]{64})", self.server.stderr)
        assert match, self.server.stderr
        self.pin = match.group(1)
        self.drop = self.server.root / "pub" / "outgoing"

    def where(self, role: str) -> list[str | Path]:
        assert self.server is not None
        url = f"ftps://{role}@127.0.0.1:{self.server.port}/"
        return ["--server", url, "--tls-fingerprint", self.pin]

    def env(self, role: str) -> dict[str, str]:
        assert self.server is not None
        return {**super().env(role), "AIRGAP_PASSWORD": self.server.password(role)}

    def published(self, bundle_id: str) -> None:
        signature = self.drop / f"{bundle_id}.manifest.json.minisig"
        deadline = time.monotonic() + 30
        while not signature.exists():
            assert time.monotonic() < deadline, "the appliance did not publish the bundle"
            time.sleep(0.05)


@pytest.fixture(params=["directory", "appliance"])
def side(
    request: pytest.FixtureRequest, keydir: Path, tmp_path: Path, docker_engine: DockerEngine
) -> Iterator[Side]:
    made = (Appliance if request.param == "appliance" else Side)(keydir, tmp_path, docker_engine)
    yield made
    if made.server is not None:
        made.server.stop()


def _omitted(side: Side, bundle_id: str) -> dict[str, str | None]:
    content = side.manifest(bundle_id)["content"]
    return {o["chain_id"]: o["bundle"] for o in content.get("omitted", [])}


def _layers(image: Any) -> list[str]:
    return list(image.attrs["RootFS"]["Layers"])


def _same_image(engine: DockerEngine, ref: str, sent: Any) -> bool:
    """The loaded image is the one sent: same id, or on the containerd store the same
    config (its ids are manifest digests, which a load may make anew)."""
    got = engine.client.images.get(ref)
    return bool(got.id == sent.id or _layers(got) == _layers(sent))


def _runs(engine: DockerEngine, ref: str) -> str:
    out = engine.client.containers.run(
        ref,
        ["/busybox", "sh", "-c", "/busybox sha256sum /layer*.bin"],
        network_mode="host",
        remove=True,
    )
    return out.decode() if isinstance(out, bytes) else str(out)


def test_a_chain_of_three_versions_goes_incrementally(
    side: Side, chain: Chain, docker_engine: DockerEngine, tmp_path: Path
) -> None:
    first = side.send(chain.ref(1))
    second = side.send(chain.ref(2))
    third = side.send(chain.ref(3))
    b1, b2, b3 = first["id"], second["id"], third["id"]
    v1, v2 = (chain_ids(_layers(image)) for image in chain.images[:2])
    assert _omitted(side, b1) == {}
    assert _omitted(side, b2) == dict.fromkeys(v1, b1)
    assert _omitted(side, b3) == {**dict.fromkeys(v1, b1), v2[-1]: b2}
    listed = run_airgap(
        ["ls", *side.where("receiver"), "--trust", side.keydir / "signing.pub", "--json"],
        env=side.env("receiver"),
    )
    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row["omitted_layers"] for row in json.loads(listed.stdout)["bundles"]}
    assert rows == {b1: 0, b2: len(v1), b3: len(v1) + 1}
    # only the new 10 MiB (random: zstd cannot shrink it) and the tar's own metadata travel
    for summary in (second, third):
        assert LAYER < summary["plaintext_bytes"] < LAYER + 64 * 1024, summary
        assert summary["payload_bytes"] < LAYER * 1.01 + 64 * 1024, summary

    expected = _runs(docker_engine, chain.ref(3))
    _remove(docker_engine.client, chain.repo)
    fetched = side.fetch()
    assert fetched.returncode == 0, fetched.stderr
    order = [b["id"] for b in json.loads(fetched.stdout)["bundles"]]
    assert order == [b1, b2, b3]
    for version, image in enumerate(chain.images, start=1):
        assert _same_image(docker_engine, chain.ref(version), image)
    assert _runs(docker_engine, chain.ref(3)) == expected
    assert _runs(docker_engine, chain.ref(2)).count("/layer") == 2


def test_missing_layers_load_nothing_until_their_bundles_arrive_in_any_order(
    chain: Chain, docker_engine: DockerEngine, keydir: Path, tmp_path: Path
) -> None:
    """Bundles reach the isolated side's media in the order 3, 2, 1."""
    side = Side(keydir, tmp_path, docker_engine)
    ids = [side.send(chain.ref(version))["id"] for version in (1, 2, 3)]
    media = tmp_path / "media"
    media.mkdir()
    receiver = Side(keydir, tmp_path, docker_engine)
    receiver.drop = media
    _remove(docker_engine.client, chain.repo)

    def arrives(bundle_id: str) -> None:
        for suffix in reversed(SUFFIXES):  # the signature last, as a sender publishes
            shutil.copy(side.drop / f"{bundle_id}{suffix}", media)

    arrives(ids[2])
    refused = receiver.fetch()
    assert refused.returncode == 3, refused.stderr
    assert f"carried by {ids[0]} (not on this source), {ids[1]} (not on this source)" in (
        refused.stderr
    )
    assert "nothing was loaded" in refused.stderr
    arrives(ids[1])
    refused = receiver.fetch()
    assert refused.returncode == 3 and f"{ids[0]} (not on this source)" in refused.stderr
    for version in (1, 2, 3):
        with pytest.raises(docker.errors.ImageNotFound):
            docker_engine.client.images.get(chain.ref(version))

    arrives(ids[0])
    fetched = receiver.fetch(ids[2])  # asked for the newest: its carriers come first
    assert fetched.returncode == 0, fetched.stderr
    assert [b["id"] for b in json.loads(fetched.stdout)["bundles"]] == ids
    for version, image in enumerate(chain.images, start=1):
        assert _same_image(docker_engine, chain.ref(version), image)


def test_a_lost_ledger_means_a_full_send_and_base_or_full_choose_by_hand(
    chain: Chain, docker_engine: DockerEngine, keydir: Path, tmp_path: Path, own_state: Path
) -> None:
    side = Side(keydir, tmp_path, docker_engine)
    b1 = side.send(chain.ref(1))["id"]
    shown = run_airgap(["ledger", "show", "--to", side.drop, "--json"])
    assert shown.returncode == 0, shown.stderr
    (ledger,) = json.loads(shown.stdout)["ledgers"]
    assert ledger["bundles"] == [b1] and ledger["destination"] == str(side.drop.resolve())

    shutil.rmtree(own_state)  # the sender's ledger is lost
    full = side.send(chain.ref(2))
    assert _omitted(side, full["id"]) == {}
    assert full["plaintext_bytes"] > LAYER + (1 << 20)
    forced = side.send(chain.ref(3), "--full")  # the ledger knows :2 now; --full ignores it
    assert _omitted(side, forced["id"]) == {}

    forgot = run_airgap(["ledger", "forget", "--to", side.drop])
    assert forgot.returncode == 0 and "forgot" in forgot.stderr
    based = side.send(chain.ref(3), "--base", chain.ref(1))  # nothing known but what --base says
    v1 = chain_ids(_layers(chain.images[0]))
    assert _omitted(side, based["id"]) == dict.fromkeys(v1), (v1, side.manifest(based["id"]))
    assert 2 * LAYER < based["plaintext_bytes"] < 2 * LAYER + 64 * 1024

    # the receiver lacks everything: the full bundle of :2 loads alone
    _remove(docker_engine.client, chain.repo)
    fetched = side.fetch(full["id"])
    assert fetched.returncode == 0, fetched.stderr
    assert _same_image(docker_engine, chain.ref(2), chain.images[1])


_PAIRS = list(itertools.permutations(engine_hosts(), 2))


@pytest.mark.parametrize(
    ("source", "target"), _PAIRS, ids=[f"{a}-to-{b}".replace("/", "_") for a, b in _PAIRS]
)
@pytest.mark.timeout(180)
def test_a_thin_bundle_loads_on_another_kind_of_engine(
    source: str, target: str, keydir: Path, tmp_path: Path
) -> None:
    """A containerd image store refuses a legacy archive that lacks a layer file: the layer
    is put back from the receiving engine itself."""
    sender = DockerEngine(source, connect_engine(source))
    receiver = DockerEngine(target, connect_engine(target))
    with (
        contextlib.closing(sender.client),
        contextlib.closing(receiver.client),
        chain_on(sender.client, tmp_path, (1 << 20, 1 << 20)) as made,
    ):
        side = Side(keydir, tmp_path, sender)
        first, second = side.send(made.ref(1))["id"], side.send(made.ref(2))["id"]
        assert _omitted(side, second) == dict.fromkeys(chain_ids(_layers(made.images[0])), first)
        expected = _runs(sender, made.ref(2))
        try:
            fetched = Side(keydir, tmp_path, receiver).fetch()
            assert fetched.returncode == 0, fetched.stderr
            assert [b["id"] for b in json.loads(fetched.stdout)["bundles"]] == [first, second]
            assert _layers(receiver.client.images.get(made.ref(2))) == _layers(made.images[1])
            assert _runs(receiver, made.ref(2)) == expected
        finally:
            _remove(receiver.client, made.repo)


@pytest.mark.docker
def test_a_thin_send_needs_room_only_for_what_it_carries(
    docker_client: Any, keydir: Path, tmp_path: Path
) -> None:
    """Found in review: the free-space check counted every layer of the images, left out or
    not, and refused a small update of a large image on media with room for the update."""
    with chain_on(docker_client, tmp_path, (8 << 20, 64 << 10)) as made:
        side = Side(keydir, tmp_path, DockerEngine("default", docker_client))
        side.send(made.ref(1))  # the ledger now holds its layers, and their file sizes
        shutil.rmtree(side.drop)  # the stick, emptied at the far side, mounted here again
        with small_disk(side.drop, "3m"):
            args = ["send", made.ref(2), "--to", side.drop, "-R", keydir / "recipient.txt"]
            args += ["--sign-key", keydir / "signing.key", "--json"]
            full = run_airgap([*args, "--full"], env=side.env("sender"))
            assert full.returncode == 1 and "not enough space" in full.stderr, full.stderr
            thin = run_airgap(args, env=side.env("sender"))
            assert thin.returncode == 0, thin.stderr
            assert json.loads(thin.stdout)["omitted_layers"] == 2


def test_a_full_tmpdir_in_a_thin_legacy_send_is_named_and_leaves_nothing_behind(
    docker_client: Any, keydir: Path, tmp_path: Path
) -> None:
    """A legacy archive's layer files pass through $TMPDIR to be hashed: a full one is the
    user's to fix, so the error says where (it was an "internal error"); the drop stays clean."""
    if int(docker_client.version()["Version"].split(".")[0]) >= 25:
        pytest.skip("this engine writes the OCI layout: layers are dropped by name, not hashed")
    with (
        small_disk(tmp_path / "tiny", "256k") as tiny,
        chain_on(docker_client, tmp_path, (1 << 20, 1 << 20)) as made,
    ):
        side = Side(keydir, tmp_path, DockerEngine("default", docker_client))
        side.send(made.ref(1))
        before = sorted(p.name for p in side.drop.iterdir())
        args = ["send", made.ref(2), "--to", side.drop, "-R", keydir / "recipient.txt"]
        args += ["--sign-key", keydir / "signing.key", "--json"]
        full = run_airgap(args, env={**side.env("sender"), "TMPDIR": str(tiny)})
        assert full.returncode == 1, full.stderr
        assert f"a temporary file for a layer, in {tiny}: No space left" in full.stderr
        assert "TMPDIR" in full.stderr and "internal error" not in full.stderr
        assert sorted(p.name for p in side.drop.iterdir()) == before
        sent = run_airgap(args, env=side.env("sender"))
        assert sent.returncode == 0, sent.stderr
        assert _omitted(side, json.loads(sent.stdout)["id"])  # thin, as it should be


@pytest.mark.docker
def test_a_bundle_the_appliance_refused_is_carried_again_by_the_next_send(
    keydir: Path, tmp_path: Path, docker_client: Any
) -> None:
    """The appliance quarantines a bundle signed by a key it does not trust and leaves the
    sender a notice: the next send says so and carries that bundle's layers again, rather
    than leaving them out for a receiver that never got them."""
    stranger = tmp_path / "stranger"
    assert run_airgap(["keygen", "--out", stranger]).returncode == 0
    with chain_on(docker_client, tmp_path, (1 << 20, 1 << 20)) as made:
        side = Appliance(keydir, tmp_path, DockerEngine("default", docker_client))
        try:
            args = ["send", made.ref(1), *side.where("sender"), "-R", keydir / "recipient.txt"]
            refused = run_airgap(
                [*args, "--sign-key", stranger / "signing.key", "--json"], env=side.env("sender")
            )
            assert refused.returncode == 0, refused.stderr
            first = json.loads(refused.stdout)["id"]
            assert side.server is not None
            notice = side.server.root / "pub" / "incoming" / "sender" / f"{first}.refused"
            deadline = time.monotonic() + 30
            while not notice.exists():
                assert time.monotonic() < deadline, "the appliance left no notice"
                time.sleep(0.05)

            again = run_airgap(
                [args[0], made.ref(2), *args[2:], "--sign-key", keydir / "signing.key", "--json"],
                env=side.env("sender"),
            )
            assert again.returncode == 0, again.stderr
            assert f"the drop box refused bundle {first}, sent earlier" in again.stderr
            second = json.loads(again.stdout)["id"]
            side.published(second)
            assert not notice.exists()  # read, and gone
            assert _omitted(side, second) == {}  # all its layers, the first one's too
            _remove(docker_client, made.repo)
            fetched = side.fetch()
            assert fetched.returncode == 0, fetched.stderr
            assert [b["id"] for b in json.loads(fetched.stdout)["bundles"]] == [second]
            assert _same_image(side.engine, made.ref(2), made.images[1])
        finally:
            if side.server is not None:
                side.server.stop()


@pytest.mark.timeout(180)
def test_a_ledger_not_written_does_not_fail_a_published_send(
    keydir: Path, tmp_path: Path, docker_engine: DockerEngine
) -> None:
    """Found in review: the bundle was published, yet the send failed (exit 1) and kept its
    spool, so the next run uploaded it again and the appliance quarantined it as a replay."""
    state = tmp_path / "sender-state"
    state.mkdir()
    (state / "sent").write_text("a file where the ledgers' folder goes")
    with chain_on(docker_engine.client, tmp_path, (1 << 20,)) as made:
        box = Appliance(keydir, tmp_path, docker_engine)
        try:
            args = ["send", made.ref(1), "--full", "--state-dir", state, *box.where("sender")]
            args += ["-R", keydir / "recipient.txt", "--sign-key", keydir / "signing.key"]
            sent = run_airgap([*args, "--json"], env=box.env("sender"))
            assert sent.returncode == 0, sent.stderr
            bundle_id = json.loads(sent.stdout)["id"]
            assert f"bundle {bundle_id} is published, but the ledger" in sent.stderr
            assert not list((tmp_path / "cache" / "airgap" / "send").iterdir())
            box.published(bundle_id)
        finally:
            assert box.server is not None
            box.server.stop()


_GRAPH = [h for h in engine_hosts() if h.endswith("/airgap-docker26.sock")]
_CONTAINERD = [h for h in engine_hosts() if h.endswith("/airgap-docker26c.sock")]


@pytest.mark.skipif(
    not (_GRAPH and _CONTAINERD), reason="needs Docker 26.1 with and without the containerd store"
)
@pytest.mark.timeout(180)
def test_a_thin_image_a_containerd_store_does_not_list_still_counts(
    keydir: Path, tmp_path: Path
) -> None:
    """Found in review: loaded over layers the receiver built itself (kept compressed), a
    thin bundle's image lacks their blobs, and a containerd store leaves it out of its image
    list, though it runs: the next thin bundle was refused, its layers "gone since"."""
    sender = DockerEngine(_GRAPH[0], connect_engine(_GRAPH[0]))
    receiver = DockerEngine(_CONTAINERD[0], connect_engine(_CONTAINERD[0]))
    repo = f"airgap-inc-{uuid.uuid4().hex[:10]}"
    files = []
    for name in "abc":
        files.append(tmp_path / f"layer-{name}.bin")
        files[-1].write_bytes(os.urandom(64 * 1024))

    def copies(names: str) -> str:
        return "".join(f"COPY layer-{name}.bin /layer-{name}.bin\n" for name in names)

    try:
        for engine in (sender, receiver):  # the same base on both sides, layer for layer
            build_image(engine.client, f"{repo}:base", extra=copies("a"), files=files)
        build_image(sender.client, f"{repo}:1", extra=copies("ab"), files=files)
        build_image(sender.client, f"{repo}:2", extra=copies("abc"), files=files)
        side = Side(keydir, tmp_path, sender)
        side.send(f"{repo}:1", "--base", f"{repo}:base")
        side.send(f"{repo}:2")
        expected = _runs(sender, f"{repo}:2")
        fetched = Side(keydir, tmp_path, receiver).fetch()
        assert fetched.returncode == 0, fetched.stderr
        listed = {i["Id"] for i in receiver.client.api.images(all=True)}
        assert receiver.client.images.get(f"{repo}:1").id not in listed  # what makes the case
        assert _runs(receiver, f"{repo}:2") == expected
    finally:
        _remove(sender.client, repo)
        _remove(receiver.client, repo)
        sender.client.close()
        receiver.client.close()
