"""The one exception tree of airgap, and the exit codes it maps to.

::

    AirgapError                      never raised itself
    ├── UsageError                   exit 2: bad arguments, missing keys or settings
    ├── KeyFileError                 exit 1: a key, identity or recipient that cannot be read
    ├── StorageError                 exit 1: local disk: no space, unwritable, file exists
    ├── VerificationError            exit 3: the bundle is not what its signer made
    │   ├── SignatureError           minisign signature missing, malformed or wrong
    │   ├── UntrustedSignerError     a valid signature by a key we do not trust
    │   ├── ManifestError            manifest malformed, not canonical, or inconsistent
    │   ├── PayloadSizeError         payload longer or shorter than the manifest says
    │   ├── SegmentHashError         a payload segment's sha256 differs from the manifest
    │   ├── AgeHeaderError           age header malformed or unsupported
    │   ├── HeaderMacError           age header MAC does not verify
    │   ├── NoIdentityMatchError     none of our identities opens the file key
    │   ├── PayloadAuthError         an age payload chunk fails authentication, or truncation
    │   ├── CompressionError         the zstd stream is corrupt
    │   ├── PlaintextHashError       decrypted plaintext sha256 differs from the manifest
    │   ├── UnsafeArchiveError       the tar would write outside the output or a device
    │   ├── ReplayError              a bundle id that was already imported
    │   └── MissingLayersError       a thin bundle needs layers this engine does not hold
    ├── TransferError                exit 4: the drop box or media failed us
    │   └── LoginError               the drop box refused the account or password
    ├── EngineError                  exit 5: the Docker engine failed or is unreachable
    ├── ServerError                  exit 1: the appliance cannot start or serve (bind, root)
    └── Interrupted                  exit 130: the user pressed Ctrl-C

Every error carries a one-line ``message``, an optional ``hint`` and its ``exit_code``. Foreign
exceptions are translated at the module boundary with ``raise ... from exc``. Messages say which
check failed and never guess why; they never contain key material or passwords.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes, documented in the README."""

    OK = 0
    ERROR = 1
    USAGE = 2
    VERIFICATION = 3
    TRANSFER = 4
    ENGINE = 5
    INTERRUPTED = 130


class AirgapError(Exception):
    """Root of the tree; catch this, raise a leaf."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(AirgapError):
    exit_code = ExitCode.USAGE


class KeyFileError(AirgapError):
    pass


class StorageError(AirgapError):
    pass


class VerificationError(AirgapError):
    exit_code = ExitCode.VERIFICATION


class SignatureError(VerificationError):
    pass


class UntrustedSignerError(VerificationError):
    pass


class ManifestError(VerificationError):
    pass


class PayloadSizeError(VerificationError):
    pass


class SegmentHashError(VerificationError):
    def __init__(self, message: str, *, segment: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.segment = segment


class AgeHeaderError(VerificationError):
    pass


class HeaderMacError(VerificationError):
    pass


class NoIdentityMatchError(VerificationError):
    pass


class PayloadAuthError(VerificationError):
    pass


class CompressionError(VerificationError):
    pass


class PlaintextHashError(VerificationError):
    pass


class UnsafeArchiveError(VerificationError):
    pass


class ReplayError(VerificationError):
    pass


class MissingLayersError(VerificationError):
    pass


class TransferError(AirgapError):
    exit_code = ExitCode.TRANSFER
    #: Whether trying again may help (a dropped connection) or not (a refusal that stands).
    transient = True


class LoginError(TransferError):
    """Wrong account or password, or a server that refuses this login: retrying would only
    earn a ban."""

    transient = False


class CertificateMismatch(TransferError):
    """The server showed another certificate than the pinned one: maybe a man in the middle;
    asking again changes nothing."""

    transient = False


class EngineError(AirgapError):
    exit_code = ExitCode.ENGINE


class ServerError(AirgapError):
    pass


class Interrupted(AirgapError):
    exit_code = ExitCode.INTERRUPTED
