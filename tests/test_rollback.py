"""Tags never move back: the comparison of refs, and a carrier's load that leaves them be."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from airgap.client.rollback import Newest, held, refusal, tag_of
from airgap.shared.errors import ReplayError
from airgap.shared.manifest import ImageEntry

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
    def __init__(self, tags: dict[str, str]) -> None:
        self.tags = tags

    def image_id(self, ref: str) -> str | None:
        return self.tags.get(ref)

    def retag(self, before: dict[str, str | None]) -> None:
        for ref, old in before.items():
            if old is None:
                self.tags.pop(ref, None)
            else:
                self.tags[ref] = old


def test_a_carrier_s_load_leaves_newer_tags_where_they_were() -> None:
    engine = _Engine({"app:1.0": "sha256:new"})
    with held(lambda: engine, ["app:1.0", "gone:1"]):  # type: ignore[arg-type, return-value]
        engine.tags.update({"app:1.0": "sha256:old", "gone:1": "sha256:old"})  # the load
    assert engine.tags == {"app:1.0": "sha256:new"}
    with pytest.raises(RuntimeError), held(lambda: engine, ["app:1.0"]):  # type: ignore[arg-type, return-value]
        engine.tags["app:1.0"] = "sha256:half"
        raise RuntimeError("the load failed")
    assert engine.tags == {"app:1.0": "sha256:new"}
