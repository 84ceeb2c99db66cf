"""Where the appliance keeps things under its root directory.

::

    ROOT/
      pub/incoming/          the drop box; anonymous uploads land here (when allowed)
      pub/incoming/NAME/     one area per sender account, its FTP home
      pub/outgoing/          published bundles only, flat: the receivers' FTP home
      quarantine/ID-STAMP/   bundles that failed verification, with reason.txt
      state/users.json       accounts and scrypt password hashes (0600)
      state/credentials.txt  passwords generated on first start (0600)
      state/audit.jsonl      the audit log, one JSON object a line
      state/tls/             self-signed certificate and its key (key 0600)

``pub/outgoing`` is filled only by the publisher, never by an FTP client. Nothing here opens a
socket; it only names paths and creates directories.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from airgap.shared.errors import ServerError


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
