"""The manifest: one canonical byte form, and nothing else accepted."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from airgap.shared.errors import ManifestError
from airgap.shared.ids import is_bundle_id, new_bundle_id
from airgap.shared.layers import chain_ids
from airgap.shared.manifest import (
    Encryption,
    FileEntry,
    ImageEntry,
    Manifest,
    OmittedLayer,
    Payload,
    payload_name,
)

BID = new_bundle_id()


def _manifest(**changes: object) -> Manifest:
    base: dict[str, object] = dict(
        id=BID,
        created="2026-11-27T12:00:00Z",
        tool="airgap-ftp/0.1.0",
        signer="0123456789ABCDEF",
        plaintext_size=3,
        plaintext_sha256="a" * 64,
        compression_level=3,
        encryption=Encryption("age-v1", ("age1xyz",), passphrase=False),
        payload=Payload(
            payload_name(BID, encrypted=True), 70_000, "b" * 64, 65536, ("c" * 64,) * 2
        ),
        files=(FileEntry("x.bin", 3, "d" * 64),),
    )
    base.update(changes)
    return Manifest(**base)  # type: ignore[arg-type]


def test_round_trip_is_byte_identical() -> None:
    m = _manifest()
    assert Manifest.parse(m.to_bytes()) == m
    img = _manifest(files=(), images=(ImageEntry("sha256:" + "e" * 64, ("a:1",), ()),))
    assert Manifest.parse(img.to_bytes()) == img
    configured = _manifest(files=(), images=(_IMAGE,))
    assert Manifest.parse(configured.to_bytes()) == configured
    plain = _manifest(
        encryption=Encryption("none"),
        payload=Payload(payload_name(BID, encrypted=False), 5, "b" * 64, 65536, ("c" * 64,)),
    )
    assert Manifest.parse(plain.to_bytes()) == plain


_IMAGE = ImageEntry("sha256:" + "e" * 64, ("a:1",), ("sha256:" + "1" * 64,), "sha256:" + "f" * 64)


def _edit(mutate: object, *, images: bool = False) -> bytes:
    obj = json.loads(_manifest(**({"files": (), "images": (_IMAGE,)} if images else {})).to_bytes())
    mutate(obj)  # type: ignore[operator]
    return (json.dumps(obj, sort_keys=True, indent=2) + "\n").encode()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o.update(format="airgap-bundle/2"), "format"),
        (lambda o: o.update(extra=1), "exactly the keys"),
        (lambda o: o["payload"].update(name="other.tar.zst.age"), "payload name"),
        (lambda o: o["payload"]["segments"].pop(), "do not cover"),
        (lambda o: o["payload"].update(segment_size=1), "segment size"),
        (lambda o: o["plaintext"].update(size=-1), "non-negative"),
        (lambda o: o["plaintext"].update(size=True), "non-negative"),
        (lambda o: o.update(id="not-an-id"), "id"),
        (lambda o: o["content"].update(type="secrets"), "content type"),
        (lambda o: o["content"]["files"].append(dict(o["content"]["files"][0])), "twice"),
        # found in review: each of these was taken
        (lambda o: o["compression"].update(level=True), "integer level"),
        (lambda o: o.update(created="9999-99-99T99:99:99Z"), "no such time"),
        # mutation testing: no test held these
        (lambda o: o["payload"].update(segment_size=1 << 40), "segment size"),
        (lambda o: o["compression"].update(algorithm="gzip"), "must be zstd"),
        (lambda o: o["encryption"].update(passphrase=1), "age-v1 or none"),
        (lambda o: o.update(signer="not hex"), "signer"),
        (lambda o: o["plaintext"].update(sha256="A" * 64), "plaintext sha256"),
        (lambda o: o["content"]["files"][0].update(sha256="g" * 64), "sha256"),
        (lambda o: o["content"]["files"][0].update(name=".."), "name"),
        (lambda o: o["content"]["files"][0].update(name="a\\b"), "name"),
        (lambda o: o["content"]["files"][0].update(name="a\nb"), "name"),
    ],
)
def test_inconsistent_manifests_are_refused(mutate: object, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.parse(_edit(mutate))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda i: i.pop("config"), "exactly the keys"),
        (lambda i: i.update(config="sha256:" + "F" * 64), "image config"),
        (lambda i: i.update(config="f" * 64), "image config"),
        (lambda i: i.update(config=1), "image config"),
        (lambda i: i.update(id=None), "image id"),
        (lambda i: i["layers"].append("sha256:x"), "layer diff id"),
        (lambda i: i["refs"].append("a:1"), "image ref appears twice"),
        (lambda i: i["refs"].append("../volumes/data"), "not a Docker image reference"),
        (lambda i: i["refs"].append("app:1?force=1"), "not a Docker image reference"),
        (lambda i: i["refs"].append("App:1"), "not a Docker image reference"),
    ],
)
def test_inconsistent_image_entries_are_refused(mutate: object, message: str) -> None:
    data = _edit(lambda o: mutate(o["content"]["images"][0]), images=True)  # type: ignore[operator]
    with pytest.raises(ManifestError, match=message):
        Manifest.parse(data)


def test_an_image_or_a_ref_listed_twice_is_refused() -> None:
    """The sender lists each image once with all its refs: a second entry, or one ref given to
    two images, would leave the tag to the order of loading (review)."""
    again = _edit(
        lambda o: o["content"]["images"].append(dict(o["content"]["images"][0])), images=True
    )
    with pytest.raises(ManifestError, match="an image appears twice"):
        Manifest.parse(again)
    other = replace(_IMAGE, id="sha256:" + "9" * 64)
    two = _manifest(files=(), images=(_IMAGE, other))
    with pytest.raises(ManifestError, match="an image ref appears twice"):
        Manifest.parse(two.to_bytes())
    fine = _manifest(files=(), images=(_IMAGE, replace(other, refs=("b:1",))))
    assert Manifest.parse(fine.to_bytes()) == fine


def test_created_is_in_ascii_digits() -> None:
    """Found in review: ``\\d`` took Arabic-Indic digits, written as UTF-8 as the writer does."""
    obj = json.loads(_manifest().to_bytes())
    obj["created"] = "\u0662\u0660\u0662\u0666-11-27T23:13:01Z"
    data = (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
    with pytest.raises(ManifestError, match="created is malformed"):
        Manifest.parse(data)


def test_non_canonical_forms_are_refused() -> None:
    data = _manifest().to_bytes()
    with pytest.raises(ManifestError, match="canonical"):
        Manifest.parse(data.replace(b"\n", b"\r\n"))
    with pytest.raises(ManifestError, match="canonical"):
        Manifest.parse(json.dumps(json.loads(data)).encode())
    with pytest.raises(ManifestError, match="duplicate"):
        Manifest.parse(b'{"id": 1, "id": 2}')
    with pytest.raises(ManifestError, match="integer"):
        Manifest.parse(b'{"size": 1.5}')
    with pytest.raises(ManifestError, match="UTF-8 JSON"):
        Manifest.parse(b"\xff")


def test_a_manifest_too_deep_to_write_back_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.12's json.loads takes nesting about 500 levels deeper than its json.dumps (with
    an indent) can write: such a manifest is not canonical, not a crash. Python 3.11, which
    runs this suite, has no such gap, so the writer is made to fail as 3.12's does."""
    from airgap.shared import manifest

    def too_deep(obj: object) -> bytes:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(manifest, "_dump", too_deep)
    with pytest.raises(ManifestError, match="canonical"):
        Manifest.parse(b"[" * 600 + b"]" * 600)


def test_ids_sort_by_time_and_match_their_pattern() -> None:
    early, late = new_bundle_id(now=1_000_000), new_bundle_id(now=2_000_000)
    assert early < late and is_bundle_id(early) and is_bundle_id(late)
    assert not is_bundle_id(early.lower()) and not is_bundle_id(early + "0")


_LAYERS = ("sha256:" + "1" * 64, "sha256:" + "2" * 64)
_THIN = ImageEntry("sha256:" + "e" * 64, ("a:2",), _LAYERS, "sha256:" + "f" * 64)


def _thin(*omitted: OmittedLayer) -> Manifest:
    return _manifest(files=(), images=(_THIN,), omitted=omitted)


def test_omitted_layers_round_trip_and_full_bundles_keep_their_form() -> None:
    bottom, top = chain_ids(_LAYERS)
    thin = _thin(OmittedLayer(bottom, new_bundle_id()), OmittedLayer(top, None))
    assert Manifest.parse(thin.to_bytes()) == thin
    full = _thin()
    assert b"omitted" not in full.to_bytes()
    assert Manifest.parse(full.to_bytes()) == full


@pytest.mark.parametrize(
    "omitted",
    [
        [],  # present means non-empty
        [{"chain_id": "sha256:" + "9" * 64, "bundle": None}],  # no layer of the images
        [{"chain_id": "sha256:" + "1" * 64, "bundle": "not-an-id"}],
        [{"chain_id": "sha256:" + "1" * 64}],
        [{"chain_id": "sha256:" + "1" * 64, "bundle": None}] * 2,
        "sha256:" + "1" * 64,
        None,  # found in review: taken, and written back without the key (a second form)
    ],
)
def test_malformed_omitted_layers_are_refused(omitted: object) -> None:
    obj = json.loads(_thin().to_bytes())
    obj["content"]["omitted"] = omitted
    data = (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
    with pytest.raises(ManifestError):
        Manifest.parse(data)


def test_chain_ids_follow_the_oci_spec() -> None:
    # ChainID(L1|L2) = sha256(ChainID(L1) + " " + DiffID(L2)), ChainID(L1) = DiffID(L1)
    import hashlib

    bottom, top = chain_ids(_LAYERS)
    assert bottom == _LAYERS[0]
    assert top == "sha256:" + hashlib.sha256(f"{_LAYERS[0]} {_LAYERS[1]}".encode()).hexdigest()
