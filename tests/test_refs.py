"""Image references: the grammar that keeps a name from climbing out of the engine's URL path."""

from __future__ import annotations

import pytest

from airgap.client.engine import Engine
from airgap.shared.errors import UsageError
from airgap.shared.refs import is_reference

ID = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "ref",
    [
        "app",
        "app:1.0",
        "my-app__x.y:V1_rc-2",
        "docker.io/library/app:latest",
        "localhost:5000/team/app:3",
        "[::1]:5000/app:1",
        "app@" + ID,
        "localhost:5000/app:1@" + ID,
        ID,
        "ab" * 32,
        "0123abc",
        "a/" * 126 + "b",  # 253 characters of name
    ],
)
def test_what_docker_names_an_image_by_is_a_reference(ref: str) -> None:
    assert is_reference(ref)


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "..",
        "../volumes/data",
        "app/../../volumes/data",
        "app/.hidden",
        "/app",
        "app/",
        "App:1",
        "app:1:2",
        "app:-1",
        "app:" + "x" * 129,
        "a/" * 128 + "b",  # 257 characters of name: Docker's limit is 255
        "app:1?force=1",
        "app#x",
        "app 1",
        "app:1\n",
        "app@sha256:xyz",
        "\uff41pp",  # a fullwidth letter
    ],
)
def test_anything_else_is_not(ref: str) -> None:
    assert not is_reference(ref)


class _Untouchable:
    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the engine was asked {name}")


@pytest.mark.parametrize(
    "call",
    [
        lambda e: e.image_id("../volumes/data"),
        lambda e: e.untag("../volumes/data"),
        lambda e: e.tag(ID, "../volumes/data"),
        lambda e: e.tag("../volumes/data", "app:1"),
        lambda e: list(e.save(["app:1", "../volumes/data"])),
    ],
)
def test_the_engine_is_never_asked_about_a_name_that_is_no_reference(call: object) -> None:
    """Found in review: a held tag ``../volumes/NAME`` made the put-back delete a volume."""
    with pytest.raises(UsageError, match="is not an image reference"):
        call(Engine(_Untouchable()))  # type: ignore[operator]
