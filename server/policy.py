"""Who may do what where: the access rules of the drop box, free of any FTP library.

Paths are given as parts relative to the server root (``("pub", "incoming", "alice", "x")``),
already normalised and proven to stay inside the root by the caller. The rules:

- a **sender** lives in ``pub/incoming/NAME``: it creates files there, resumes them (REST+STOR,
  APPE), asks SIZE/MDTM/HASH of them, renames ``X.part`` to ``X`` and deletes its ``.part``
  files, and the ``ID.refused`` notices the publisher leaves for its refused bundles. It never
  downloads, never makes directories and never sees another area. Files that a bundle check
  accepted or refused are moved out of its area, so no completed file is ever within its
  reach.
- a **receiver** lives in ``pub/outgoing`` (published bundles only): it lists, downloads and
  deletes there, and nothing else.
- **anonymous** (only if enabled) starts at the root and may enter ``pub`` and
  ``pub/incoming``. ``upload``: create new files in ``pub/incoming``, no listing, no reading, no
  resume. ``read-write`` (the book's ch9_ftpd): also list, read and resume plain files there.
  Neither touches a name a user could have (``hello``, not ``hello.1.tar``), whether or not a
  sender's area has it: the replies would otherwise tell who the senders are.

Overwriting is a storage question, not a policy one: see :mod:`airgap.server.storage`. This
module never touches the disk.
"""

from __future__ import annotations

import enum
import unicodedata
from dataclasses import dataclass

from airgap.server.config import AnonymousMode
from airgap.server.users import Role, could_be_name

PARTIAL_SUFFIX = ".part"
#: What the publisher leaves in a sender's area for each of its bundles it quarantined.
REFUSED_SUFFIX = ".refused"
MAX_NAME_BYTES = 255
Parts = tuple[str, ...]

INCOMING: Parts = ("pub", "incoming")
OUTGOING: Parts = ("pub", "outgoing")


class Op(enum.Enum):
    CWD = "enter"
    LIST = "list"
    STAT = "inspect"
    READ = "download"
    CREATE = "upload"
    RESUME = "resume"
    RENAME_FROM = "rename"
    RENAME_TO = "rename to"
    DELETE = "delete"
    MKDIR = "make directories"
    RMDIR = "remove directories"


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role | None  # None: anonymous
    anonymous: AnonymousMode = AnonymousMode.OFF

    @property
    def home(self) -> Parts:
        if self.role is Role.SENDER:
            return (*INCOMING, self.name)
        if self.role is Role.RECEIVER:
            return OUTGOING
        return ()

    @property
    def label(self) -> str:
        return self.role.value if self.role else "anonymous"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


ALLOW = Decision(True)


def refuse(principal: Principal, op: Op) -> Decision:
    who = f"a {principal.role.value}" if principal.role else "anonymous"
    return Decision(False, f"{who} may not {op.value} here")


#: Characters that reorder the text around them on a terminal (and in a log read there).
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f"  # Arabic letter mark, left-to-right and right-to-left marks
    "\u202a\u202b\u202c\u202d\u202e"  # embeddings and overrides, and their end
    "\u2066\u2067\u2068\u2069"  # isolates, and their end
)


def valid_name(name: str) -> bool:
    """A plain file name we are willing to store: no hidden, control or path characters, and
    nothing that changes how a terminal or a log shows the text around it: no C0 or C1
    control, line or paragraph separator, or bidirectional control. Spaces of every kind,
    joiners and letters of any script are names' business."""
    return (
        bool(name)
        and not name.startswith(".")
        and "/" not in name
        and len(name.encode("utf-8", "surrogateescape")) <= MAX_NAME_BYTES
        and not any(_disturbs(c) for c in name)
    )


def _disturbs(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in BIDI_CONTROLS


def decide(principal: Principal, op: Op, rel: Parts, *, is_dir: bool = False) -> Decision:
    if principal.role is Role.SENDER:
        allowed = _sender(op, rel, principal.home, is_dir=is_dir)
    elif principal.role is Role.RECEIVER:
        allowed = _receiver(op, rel, principal.home, is_dir=is_dir)
    else:
        allowed = _anonymous(op, rel, principal.anonymous, is_dir=is_dir)
    return ALLOW if allowed else refuse(principal, op)


def _in(rel: Parts, directory: Parts) -> bool:
    """``rel`` is a plain, valid file name directly inside ``directory``."""
    return len(rel) == len(directory) + 1 and rel[:-1] == directory and valid_name(rel[-1])


def _sender(op: Op, rel: Parts, home: Parts, *, is_dir: bool) -> bool:
    if op in (Op.CWD, Op.LIST) and rel == home:
        return True
    if not _in(rel, home) or is_dir:
        return False
    if op in (Op.LIST, Op.STAT, Op.CREATE, Op.RESUME, Op.RENAME_TO):
        return True
    if op is Op.DELETE and rel[-1].endswith(REFUSED_SUFFIX):
        return True  # the publisher's word that a bundle was refused, once read
    return op in (Op.RENAME_FROM, Op.DELETE) and rel[-1].endswith(PARTIAL_SUFFIX)


def _receiver(op: Op, rel: Parts, home: Parts, *, is_dir: bool) -> bool:
    if op in (Op.CWD, Op.LIST) and rel == home:
        return True
    return _in(rel, home) and not is_dir and op in (Op.LIST, Op.STAT, Op.READ, Op.DELETE)


def _anonymous(op: Op, rel: Parts, mode: AnonymousMode, *, is_dir: bool) -> bool:
    if mode is AnonymousMode.OFF:
        return False
    if op is Op.CWD:
        return rel in ((), ("pub",), INCOMING)
    if op is Op.LIST and rel in ((), ("pub",), INCOMING):
        return mode is AnonymousMode.READ_WRITE
    # Never a name a user could have: a sender's area (a directory) is refused, and a free
    # name must be too, or the replies would tell who the senders are.
    if not _in(rel, INCOMING) or is_dir or could_be_name(rel[-1]):
        return False
    if op is Op.CREATE:
        return True
    return mode is AnonymousMode.READ_WRITE and op in (Op.LIST, Op.STAT, Op.READ, Op.RESUME)


def visible(principal: Principal, directory: Parts, name: str, *, is_dir: bool) -> bool:
    """Whether a listing of ``directory`` shows ``name``; links are never shown at all."""
    if not valid_name(name):
        return False
    if principal.role is None and principal.anonymous is AnonymousMode.READ_WRITE:
        if directory == ():
            return name == "pub" and is_dir
        if directory == ("pub",):
            return name == "incoming" and is_dir
    return not is_dir and decide(principal, Op.LIST, (*directory, name)).allowed


def rename_allowed(src: Parts, dst: Parts) -> bool:
    """Only ``X.part`` to ``X`` in the same directory: finishing an upload, nothing more."""
    return (
        src[:-1] == dst[:-1]
        and src[-1].endswith(PARTIAL_SUFFIX)
        and dst[-1] == src[-1][: -len(PARTIAL_SUFFIX)]
    )
