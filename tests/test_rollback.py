"""Tags never move back: the comparison of refs, and a carrier's load that leaves them be."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airgap.client import fetch
from airgap.client.ledger import Held, Ledger
from airgap.client.rollback import Newest, refusal
from airgap.shared.errors import EngineError, ReplayError, StorageError
from airgap.shared.manifest import Encryption, ImageEntry
from airgap.shared.refs import tag_of

OLD, MID, NEW = (
    "01AAAAAAAAAAAAAAAAAAAAAAAA",
    "01AAAAAAAAAAAAAAAAAAAAAAAM",
    "01AAAAAAAAAAAAAAAAAAAAAAAZ",
)


@pytest.mark.parametrize(
    ("ref", "tag"),
    [
        ("app", "app:latest"),
        ("app:1.0", "app:1.0"),
        ("docker.io/library/app:1.0", "app:1.0"),
        ("docker.io/library/app", "app:latest"),
        ("docker.io/me/app:2", "me/app:2"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("localhost:5000/app:3", "localhost:5000/app:3"),
        ("app@sha256:" + "a" * 64, "app@sha256:" + "a" * 64),
        # Docker's FamiliarName (review): library/ goes only before a name with no /.
        ("library/app:1", "app:1"),
        ("index.docker.io/library/app", "app:latest"),
        ("index.docker.io/me/app", "me/app:latest"),
        ("docker.io/library/org/app:1", "library/org/app:1"),
        ("org/app:1", "org/app:1"),
        ("docker.io/library/app@sha256:" + "b" * 64, "app@sha256:" + "b" * 64),
    ],
)
def test_a_ref_is_compared_as_the_tag_it_moves(ref: str, tag: str) -> None:
    assert tag_of(ref) == tag


@dataclass(frozen=True)
class _Manifest:
    """Only what Newest reads of a manifest: its id and its images' refs."""

    id: str
    images: tuple[ImageEntry, ...]


def _manifest(bundle_id: str, *refs: str) -> Any:
    return _Manifest(bundle_id, (ImageEntry("sha256:x", tuple(refs), ()),))


def test_a_bundle_older_than_the_last_import_of_a_tag_is_newer_nowhere_else() -> None:
    newest = Newest({"docker.io/library/app:1.0": MID, "db": OLD})
    assert newest.newer(_manifest(OLD, "app:1.0", "db:latest")) == {"app:1.0": MID}
    assert newest.newer(_manifest(NEW, "app:1.0")) == {}  # newer: it may move the tag
    assert newest.newer(_manifest(MID, "app:1.0")) == {}  # the same bundle is no rollback
    newest.imported(["app:1.0"], NEW)
    assert newest.newer(_manifest(MID, "docker.io/library/app:1.0")) == {
        "docker.io/library/app:1.0": NEW
    }
    error = refusal({"app:1.0": NEW})
    assert isinstance(error, ReplayError)
    assert error.message.startswith(f"older than bundle {NEW}, from which app:1.0")


class _Engine:
    """The engine as a fetch sees it: tags, layers, and what happened, in order."""

    def __init__(self, tags: dict[str, str]) -> None:
        self.tags = tags
        self.chains: set[str] = set()
        self.events: list[str] = []
        self.down = False

    def image_id(self, ref: str) -> str | None:
        return self.tags.get(ref)

    def retag(self, before: dict[str, str | None]) -> None:
        if self.down:
            raise EngineError("engine unreachable")
        self.events.append("retag")
        for ref, old in before.items():
            if old is None:
                self.tags.pop(ref, None)
            else:
                self.tags[ref] = old

    def chain_ids(self, *, also: object = ()) -> set[str]:
        return self.chains

    def config_digest(self, ref: str) -> str | None:
        """Every image loaded here has the config the manifests name; others have their own."""
        found = self.tags.get(ref, "")
        return "sha256:x" if found.startswith("sha256:01") else None


class _Ledger:
    """The ledger, in memory: its records and its held file (see test_ledger_holds_... for
    the file itself)."""

    def __init__(self, newest: dict[str, str]) -> None:
        self._newest = newest
        self.records: list[tuple[str, tuple[str, ...]]] = []
        self.on_disk: Held | None = None

    def read(self) -> tuple[set[str], dict[str, str]]:
        newest = dict(self._newest)
        for bundle_id, refs in self.records:
            newest.update({ref: bundle_id for ref in refs if bundle_id > newest.get(ref, "")})
        return set(self._newest.values()) | {b for b, _ in self.records}, newest

    def record(self, bundle_id: str, **fields: Any) -> None:
        self.records.append((bundle_id, tuple(fields["refs"])))

    def locked(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def unconsumed(self, where: str) -> set[str]:
        return set()

    def held(self) -> Held | None:
        return self.on_disk

    def hold(self, held: Held) -> None:
        self.on_disk = held

    def unhold(self) -> None:
        self.on_disk = None


def _image(ref: str) -> ImageEntry:
    return ImageEntry("sha256:x", (ref,), ())


CARRIER, THIN = OLD, NEW  # the carrier is older than MID, from which app:1 came here
PLAIN = Encryption("none")
MANIFESTS = {
    CARRIER: SimpleNamespace(id=CARRIER, images=(_image("app:1"),), omitted=(), encryption=PLAIN),
    THIN: SimpleNamespace(
        id=THIN,
        images=(_image("app:2"),),
        omitted=(SimpleNamespace(chain_id="c1", bundle=CARRIER),),
        encryption=PLAIN,
    ),
}


def _fetch(
    monkeypatch: pytest.MonkeyPatch,
    engine: _Engine,
    ledger: _Ledger,
    only: tuple[str, ...],
    manifests: dict[str, Any] = MANIFESTS,
) -> list[Any]:
    """A fetch of CARRIER and THIN, with stand-ins for the source and the load (the real
    thing: test_images.py); THIN leaves out a layer only CARRIER carries."""

    def receive(run: Any, manifest: Any) -> tuple[str, ...]:
        engine.events.append(f"load {manifest.id}")
        for image in manifest.images:
            engine.tags[image.refs[0]] = f"sha256:{manifest.id}"
        if manifest.id == CARRIER:
            engine.chains.add("c1")
        return tuple(image.refs[0] for image in manifest.images)

    monkeypatch.setattr(fetch, "open_bundle", lambda _t, b, _k: (manifests[b], b"m"))
    monkeypatch.setattr(fetch, "published_ids", lambda _names: sorted(manifests))
    monkeypatch.setattr(fetch._Run, "_receive", receive)
    monkeypatch.setattr(fetch, "missing_layers", _missing)
    source = SimpleNamespace(list=lambda: [], describe=lambda: "media")
    into = fetch.Destination(engine=lambda: engine)  # type: ignore[arg-type, return-value]
    return fetch.fetch_bundles(
        source,  # type: ignore[arg-type]
        into,
        identities=[],
        trusted=[],
        ledger=ledger,  # type: ignore[arg-type]
        only=only,
    )


def _missing(manifest: Any, chains: set[str]) -> list[Any]:
    return [o for o in manifest.omitted if o.chain_id not in chains]


@pytest.mark.parametrize("only", [(), (THIN,)])
def test_a_carrier_loads_for_a_newer_thin_bundle_and_leaves_the_newer_tag(
    monkeypatch: pytest.MonkeyPatch, only: tuple[str, ...]
) -> None:
    """Found in review: a plain fetch tried the old carrier first (oldest first), refused it
    as a rollback and never tried it again, so the thin bundle could not load."""
    engine = _Engine({"app:1": "sha256:mid"})
    ledger = _Ledger({"app:1": MID})
    outcomes = _fetch(monkeypatch, engine, ledger, only)
    assert [(o.bundle_id, o.imported, o.error) for o in outcomes] == [
        (CARRIER, (), None),
        (THIN, ("app:2",), None),
    ]
    assert ledger.records == [(CARRIER, ()), (THIN, ("app:2",))]
    assert engine.tags == {"app:1": "sha256:mid", "app:2": f"sha256:{THIN}"}


def test_tags_go_back_only_once_the_thin_bundle_has_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found in review: the tag the carrier held back was gone from the engine, so putting it
    back removed it, and with the carrier's only name its image and the layers it was loaded
    for, before the thin bundle could use them."""
    engine = _Engine({})  # app:1 removed since it was imported
    _fetch(monkeypatch, engine, _Ledger({"app:1": MID}), ())
    assert engine.events == [f"load {CARRIER}", f"load {THIN}", "retag"]
    assert engine.tags == {"app:2": f"sha256:{THIN}"}


@pytest.mark.parametrize("before", ["sha256:mid", None])
def test_a_thin_bundle_keeps_its_own_tag_that_its_carrier_held(
    monkeypatch: pytest.MonkeyPatch, before: str | None
) -> None:
    """Found in review: app:1 rebuilt (MID, imported here), then back on the old base, sent
    thin (THIN leaves out CARRIER's layer). The carrier's app:1 was held, THIN tagged app:1,
    and putting the held tag back moved it to MID's image (or, removed since, took it away)."""
    thin = SimpleNamespace(**{**vars(MANIFESTS[THIN]), "images": (_image("app:1"),)})
    engine = _Engine({} if before is None else {"app:1": before})
    ledger = _Ledger({"app:1": MID})
    outcomes = _fetch(monkeypatch, engine, ledger, (), {CARRIER: MANIFESTS[CARRIER], THIN: thin})
    assert [(o.bundle_id, o.imported, o.error) for o in outcomes] == [
        (CARRIER, (), None),
        (THIN, ("app:1",), None),
    ]
    assert engine.tags == {"app:1": f"sha256:{THIN}"}


def test_an_old_bundle_no_newer_one_needs_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _Engine({"app:1": "sha256:mid"})
    (outcome,) = _fetch(monkeypatch, engine, _Ledger({"app:1": MID}), (CARRIER,))
    assert isinstance(outcome.error, ReplayError)
    assert outcome.error.message.startswith(f"older than bundle {MID}, from which app:1")
    assert engine.tags == {"app:1": "sha256:mid"} and engine.events == []


def test_a_missing_layer_of_a_carrier_imported_before_is_not_fetched_again() -> None:
    """Found in review: the hint said to fetch the carrier first, which a fetch refuses as
    imported here before, when the carrier's images were removed since."""
    from airgap.client.fetch import _missing
    from airgap.shared.manifest import OmittedLayer

    gone = [OmittedLayer("sha256:" + "1" * 64, CARRIER)]
    again = _missing(MANIFESTS[THIN], gone, {CARRIER}, {CARRIER})
    assert "imported before, but its layers are gone since" in again.message
    assert again.hint is not None and again.hint.startswith("load those images again")
    first = _missing(MANIFESTS[THIN], gone, {CARRIER}, set())
    assert first.hint is not None and first.hint.startswith("fetch those bundles first")


class _Killed(BaseException):
    """SIGKILL, as far as this process can tell: nothing after it runs, no finally either."""


@pytest.mark.parametrize("at", ["carrier loaded", "carrier recorded"])
def test_tags_a_carrier_moved_go_back_after_a_killed_run(
    monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    """Found by killing fetches: where a carrier's tags go back was known to the run alone,
    so a kill after the carrier's load left app:1 on the old image for good (and, its record
    missing, the carrier was refused as a rollback on every run after)."""
    engine = _Engine({"app:1": "sha256:mid"})
    ledger = _Ledger({"app:1": MID})
    real_record = _Ledger.record

    def record(self: _Ledger, bundle_id: str, **fields: Any) -> None:
        if at == "carrier loaded":
            raise _Killed  # after the load, before its record
        real_record(self, bundle_id, **fields)
        if at == "carrier recorded":
            raise _Killed

    with monkeypatch.context() as killing:
        killing.setattr(_Ledger, "record", record)
        killing.setattr(fetch._Run, "_put_back", lambda self, bundle_id: None)  # no finally
        with pytest.raises(_Killed):
            _fetch(killing, engine, ledger, ())
    assert engine.tags["app:1"] == f"sha256:{CARRIER}"  # what the kill left
    held = ledger.held()
    assert held is not None and held.tags == {"app:1": "sha256:mid"}
    assert held.carriers == (CARRIER,)
    outcomes = _fetch(monkeypatch, engine, ledger, ())
    assert [(o.bundle_id, o.error) for o in outcomes if o.error] == []
    assert engine.tags == {"app:1": "sha256:mid", "app:2": f"sha256:{THIN}"}
    assert ledger.records == [(CARRIER, ()), (THIN, ("app:2",))]
    assert ledger.held() is None
    assert _fetch(monkeypatch, engine, ledger, ()) == []  # and then nothing to do


def test_the_ledger_holds_tags_on_disk_and_ignores_a_file_not_its_own(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "state" / "imported.jsonl")
    assert ledger.held() is None
    ledger.hold(Held(THIN, {"app:1": "sha256:mid", "app:9": None}, (CARRIER,)))
    assert Ledger(ledger.path).held() == Held(
        THIN, {"app:1": "sha256:mid", "app:9": None}, (CARRIER,)
    )
    assert (tmp_path / "state" / "imported.jsonl.held").stat().st_mode & 0o777 == 0o600
    ledger.unhold()
    assert ledger.held() is None
    junk = [
        '{"bundle": 1}',
        '{"bundle": "x", "tags": {"a": 2}, "carriers": []}',
        "[",
        "",
        # Found in review: the put-back sent these to the engine's API in a URL path.
        '{"bundle": "x", "tags": {"../volumes/data": null}, "carriers": []}',
        '{"bundle": "x", "tags": {"app:1": "../volumes/data"}, "carriers": []}',
        '{"bundle": "x", "tags": {}, "carriers": [], "moved": {"app:1": "../x"}}',
    ]
    for text in junk:
        (tmp_path / "state" / "imported.jsonl.held").write_text(text)
        assert ledger.held() is None, text


@pytest.mark.parametrize("what", ["folder", "ledger", "held"])
def test_a_ledger_others_could_have_written_is_refused(tmp_path: Path, what: str) -> None:
    """Found in review: a held file written by anyone moved tags at the next fetch."""
    ledger = Ledger(tmp_path / "state" / "imported.jsonl")
    ledger.record(THIN, manifest_sha256="0" * 64, where="here", refs=("app:1",))
    ledger.hold(Held(THIN, {"app:1": "sha256:mid"}, (CARRIER,)))
    with ledger.locked():
        pass
    target = {"folder": ledger.path.parent, "ledger": ledger.path, "held": ledger._held}[what]
    target.chmod(target.stat().st_mode | 0o002)
    with pytest.raises(StorageError, match="others may write") as refused, ledger.locked():
        pass
    assert "--state-dir" in (refused.value.hint or "")
    # Found in a README audit: airgap ls read it all the same, to call bundles imported.
    with pytest.raises(StorageError, match="others may write"):
        ledger.ids()


def test_the_ledgers_folders_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ledger = Ledger(tmp_path / "home" / "state" / "airgap" / "imported.jsonl")
        with ledger.locked():
            pass
    finally:
        os.umask(old)
    for folder in ("home", "home/state", "home/state/airgap"):
        assert (tmp_path / folder).stat().st_mode & 0o777 == 0o700, folder


def _killed_in_the_carriers_load(
    monkeypatch: pytest.MonkeyPatch, engine: _Engine, at: str = "_moved"
) -> _Ledger:
    """A fetch killed once CARRIER's load has moved app:1: before it noted where (``_moved``)
    or before its record (``record``)."""
    ledger = _Ledger({"app:1": MID})

    def killed(*args: Any, **kwargs: Any) -> None:
        raise _Killed

    with monkeypatch.context() as killing:
        killing.setattr(_Ledger if at == "record" else fetch._Run, at, killed)
        killing.setattr(fetch._Run, "_put_back", lambda self, bundle_id: None)
        with pytest.raises(_Killed):
            _fetch(killing, engine, ledger, ())
    assert engine.tags["app:1"] == f"sha256:{CARRIER}"
    return ledger


@pytest.mark.parametrize(("at", "noted"), [("_moved", "sha256:x"), ("record", f"sha256:{CARRIER}")])
def test_a_tag_its_user_moved_since_the_kill_stays(
    monkeypatch: pytest.MonkeyPatch, at: str, noted: str
) -> None:
    """Review: the held file said only where app:1 went back to, so the next run moved it
    there from wherever its user had put it since. Where the load puts it is noted before
    the load (its config digest), then as the engine names it."""
    engine = _Engine({"app:1": "sha256:mid"})
    ledger = _killed_in_the_carriers_load(monkeypatch, engine, at)
    held = ledger.held()
    assert held is not None and held.moved == {"app:1": noted}
    engine.tags["app:1"] = "sha256:users-own"
    outcomes = _fetch(monkeypatch, engine, ledger, ())
    assert [o.error for o in outcomes] == [None, None]
    assert engine.tags == {"app:1": "sha256:users-own", "app:2": f"sha256:{THIN}"}
    assert ledger.held() is None


@pytest.mark.parametrize("at", ["_moved", "record"])
def test_tags_not_put_back_wait_for_the_next_run(monkeypatch: pytest.MonkeyPatch, at: str) -> None:
    """Review: a failed put-back emptied what the run held, and the next bundle's end then
    deleted the held file: the tags stayed on the carrier's image for good."""
    engine = _Engine({"app:1": "sha256:mid"})
    ledger = _killed_in_the_carriers_load(monkeypatch, engine, at)
    engine.down = True
    outcomes = _fetch(monkeypatch, engine, ledger, ())
    errors = [o.error.message for o in outcomes if o.error]
    assert errors == ["tags moved by its carriers not put back: engine unreachable"]
    held = ledger.held()
    assert held is not None and held.tags == {"app:1": "sha256:mid"}
    engine.down = False
    assert _fetch(monkeypatch, engine, ledger, ()) == []
    assert engine.tags == {"app:1": "sha256:mid", "app:2": f"sha256:{THIN}"}
    assert ledger.held() is None
