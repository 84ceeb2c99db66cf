"""Docker image references, by the grammar of the distribution project's reference package:
``[domain[:port]/]path[:tag][@digest]``, or an image id.

An engine's API takes a reference inside a URL path (``/images/{ref}/json``), where the SDK
leaves ``/`` as it is: ``../volumes/x`` would climb out of ``/images/`` and name another kind
of object. So a reference from a manifest, a ledger or a command line reaches an engine only
if it fits this grammar, whose path components never begin with a dot.
"""

from __future__ import annotations

import re

_ALNUM = "[a-z0-9]+"
_COMPONENT = f"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_DOMAIN_PART = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])"
_NAME = f"(?:{_HOST}(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = "[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-fA-F0-9]{32,}"
_REFERENCE = re.compile(f"{_NAME}(?::{_TAG})?(?:@{_DIGEST})?")
#: Docker's limit on a name (domain and path), which the grammar leaves open.
NAME_LIMIT = 255


def is_reference(text: str) -> bool:
    """Whether ``text`` is an image reference (an image id is one too: a hex name, or
    ``sha256:`` and its hex as a name and a tag)."""
    if _REFERENCE.fullmatch(text) is None:
        return False
    name = text.split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    return len(name) <= NAME_LIMIT


def tag_of(ref: str) -> str:
    """The tag ``ref`` moves, as Docker shows it: ``app`` is ``app:latest``, and so are
    ``library/app`` and ``docker.io/library/app:latest``; ``docker.io/library/org/app`` is
    ``library/org/app``, another repository than ``org/app``. A ref by digest keeps it."""
    name, at, digest = ref.partition("@")
    tag = "" if at else ":latest"
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
        tag = ":" + tag
    return familiar(name) + tag + at + digest


def familiar(name: str) -> str:
    """A repository name as Docker shows it (its reference package's FamiliarName)."""
    for registry in ("docker.io/", "index.docker.io/"):
        if name.startswith(registry):
            name = name[len(registry) :]
            break
    if name.startswith("library/") and "/" not in name[len("library/") :]:
        name = name[len("library/") :]
    return name
