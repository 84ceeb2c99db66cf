"""Where the appliance keeps things under its root directory.

::

    ROOT/
      pub/incoming/          the drop box; anonymous uploads land here (when allowed)
      pub/incoming/NAME/     one area per sender account, its FTP home
      pub/outgoing/          published bundles only, flat: the receivers' FTP home
      quarantine/NAME/ID-STAMP/  bundles from sender NAME that failed verification, with
                             reason.txt (anonymous uploads: quarantine/anonymous/)
      state/users.json       accounts and scrypt password hashes (0600)
      state/credentials.txt  passwords generated on first start, until changed (0600)
      state/audit.jsonl      the audit log, one JSON object a line
      state/tls/             self-signed certificate and its key (key 0600)

``pub/outgoing`` is filled only by the publisher, never by an FTP client. ``airgap serve``
creates a root (:meth:`Layout.create`); the account commands take an existing one, or an empty
directory to add accounts to before the first start (:func:`existing`), so a mistyped root is
an error rather than a second appliance that no server reads.
Nothing here opens a socket; it only names paths and creates directories.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from airgap.shared.errors import ServerError, StorageError, UsageError


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def pub(self) -> Path:
        return self.root / "pub"

    @property
    def incoming(self) -> Path:
        return self.pub / "incoming"

    @property
    def outgoing(self) -> Path:
        return self.pub / "outgoing"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    def quarantine_of(self, area: Path) -> Path:
        """Where the refused bundles of ``area`` wait for the operator: a folder per sender
        (its bundles count against its quota there too), ``anonymous`` for anonymous uploads,
        a name no account may take."""
        return self.quarantine / ("anonymous" if area == self.incoming else area.name)

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def users_file(self) -> Path:
        return self.state / "users.json"

    @property
    def credentials_file(self) -> Path:
        return self.state / "credentials.txt"

    @property
    def audit_file(self) -> Path:
        return self.state / "audit.jsonl"

    @property
    def tls_cert(self) -> Path:
        return self.state / "tls" / "cert.pem"

    @property
    def tls_key(self) -> Path:
        return self.state / "tls" / "key.pem"

    def sender_area(self, name: str) -> Path:
        return self.incoming / name

    def initialised(self) -> bool:
        """True once the accounts file exists: a first start writes it after the directories."""
        return self.users_file.is_file()

    def create(self) -> None:
        """Make every directory; state and quarantine are private to the server's user."""
        try:
            for path, mode in (
                (self.root, 0o755),
                (self.pub, 0o755),
                (self.incoming, 0o755),
                (self.outgoing, 0o755),
                (self.quarantine, 0o700),
                (self.state, 0o700),
                (self.state / "tls", 0o700),
            ):
                path.mkdir(mode=mode, parents=True, exist_ok=True)
                if path.is_symlink():
                    raise ServerError(f"{path} is a symbolic link; refusing to serve it")
                path.chmod(mode)
        except OSError as exc:
            raise ServerError(f"cannot create {self.root}: {exc.strerror or exc}") from exc


def resolved(root: Path) -> Layout:
    """A layout on the real path of ``root``, so later containment checks compare like with like."""
    return Layout(Path(os.path.realpath(root)))


def existing(root: Path, *, provision: bool = False) -> Layout:
    """The layout of ``root``, which ``airgap serve`` prepared; never a new root by mistake.

    With ``provision``, an existing empty directory does too, so accounts can be added before
    the first start (a fresh volume): a missing root is a mistyped one, an empty one was made
    for this. Nothing is created here; the first account file makes the root an initialised one.
    """
    layout = resolved(root)
    try:
        if layout.initialised():
            return layout
        is_dir = layout.root.is_dir()
        if provision and is_dir and not any(layout.root.iterdir()):
            return layout
    except OSError as exc:
        raise StorageError(f"cannot read {layout.root}: {exc.strerror or exc}") from exc
    lacks = f"it has no {layout.users_file.relative_to(layout.root)}"
    raise UsageError(
        f"{root} is not an airgap server root: {lacks if is_dir else 'it does not exist'}",
        hint=f"check --root; `airgap serve --root {root}` creates one on its first start",
    )
