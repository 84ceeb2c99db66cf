"""Key sets: the age identity that opens bundles and the minisign key that signs them.

Generates key material and renders the key files in the formats of ``age-keygen`` and
``minisign -G -W``, so every file works with those tools by hand. Writing them to disk with the
right modes is the client's job: this module never touches files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from airgap.shared import age, minisign

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


@dataclass(frozen=True)
class KeyFile:
    name: str
    text: str = field(repr=False)  # may be a secret key
    mode: int = PUBLIC_MODE


@dataclass(frozen=True)
class KeySet:
    identity: age.X25519Identity
    signing: minisign.SecretKey

    @classmethod
    def generate(cls) -> KeySet:
        return cls(age.X25519Identity.generate(), minisign.SecretKey.generate())

    def files(self, *, created: datetime, passphrase: bytes | None = None) -> list[KeyFile]:
        return [
            KeyFile(
                "identity.txt",
                age.format_identity_file(self.identity, created=created),
                SECRET_MODE,
            ),
            KeyFile("recipient.txt", self.identity.recipient.encode() + "\n", PUBLIC_MODE),
            KeyFile("signing.key", self.signing.encode(passphrase=passphrase), SECRET_MODE),
            KeyFile("signing.pub", self.signing.public_key.encode(), PUBLIC_MODE),
        ]
