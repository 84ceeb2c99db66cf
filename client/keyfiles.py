"""Key files on disk: reading identities, recipients and minisign keys; writing a new key set.

Secret files are created 0600 with O_EXCL and renamed into place only when complete, so a key
is never readable by others, not even for an instant, and never half-written. Nothing here
prints or logs key material.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from airgap.client.private import private_dir, staged, sync_dir
from airgap.shared import age, minisign
from airgap.shared.errors import KeyFileError, StorageError, UsageError
from airgap.shared.keys import KeyFile
from airgap.shared.owners import written_by_others

MAX_KEY_FILE = 1024 * 1024


def read_key_text(path: Path, what: str) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE + 1)
    except FileNotFoundError as exc:
        raise KeyFileError(f"{what} {path} does not exist") from exc
    except OSError as exc:
        raise KeyFileError(f"{what} {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{what} {path} is too large to be a key file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{what} {path} is not UTF-8 text") from exc


def load_identities(paths: Sequence[Path]) -> list[age.X25519Identity]:
    found: list[age.X25519Identity] = []
    for path in paths:
        text = read_key_text(path, "identity file")
        with _naming(str(path), text, "an age identity"):
            found += age.parse_identities(text)
        _check_private(path, "identity file")
    return found


def load_recipients(values: Sequence[str], files: Sequence[Path]) -> list[age.X25519Recipient]:
    found = []
    for value in values:  # an argument, not a file: one that does not parse is a usage error
        with _naming(f"--recipient {value[:24]!r}", usage=True):
            found.append(age.X25519Recipient.parse(value))
    for path in files:
        text = read_key_text(path, "recipients file")
        _check_guarded(path, "recipients file", "whom bundles are encrypted to")
        if not any(s and s[0] != "#" for s in map(str.strip, text.splitlines())):  # as init left it
            raise UsageError(
                f"recipients file {path} holds no recipient yet",
                hint="put each receiver's age1... line (its keys/recipient.txt) into it",
            )
        with _naming(str(path), text, "an age recipient"):
            found += age.parse_recipients(text)
    return found


def load_signing_key(path: Path, passphrase: Callable[[], bytes]) -> minisign.SecretKey:
    text = read_key_text(path, "signing key")
    if text.startswith("untrusted comment: minisign public key"):
        raise KeyFileError(
            f"signing key {path} is a public key",
            hint="--sign-key takes the secret signing.key; signing.pub goes to receivers",
        )
    # Before its passphrase is asked for; another kind is named below.
    if _kind_of(text) == _SECRET_SIGNING or minisign.holds_secret_key(text):
        _check_private(path, "signing key")
    with _naming(f"signing key {path}", text, "a minisign secret key"):
        return minisign.SecretKey.parse(text, passphrase=passphrase)


def _check_private(path: Path, what: str) -> None:
    """A secret key in a file of one's own that others may read or write is refused, as ssh
    refuses such a private key (another user's file, a pipe or a terminal is not checked)."""
    try:
        info = path.stat()
    except OSError:
        return  # read a moment ago: gone since, it is nobody's to read
    if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and info.st_mode & 0o077:
        shown = shlex.quote(str(path))
        raise KeyFileError(
            f"{what} {path} holds a secret key, and others may read or write it "
            f"(mode {stat.S_IMODE(info.st_mode):04o})",
            hint=f"chmod 600 {shown} (on a medium that keeps no modes, such as FAT, copy it "
            "to a private directory first)",
        )


def _check_guarded(path: Path, what: str, decides: str) -> None:
    """A key that decides whom to trust or to encrypt to, in a file others could have written,
    is refused: they could have added a signer of theirs, or a recipient."""
    if why := written_by_others(path):
        raise KeyFileError(
            f"{what} {path} decides {decides}, and {why}",
            hint="keep it in a folder of your own that only you may write to (chmod go-w; "
            "from a medium that keeps no modes, such as FAT, copy it there first)",
        )


#: How each kind of key file starts (after age's comment lines), and the option it goes with.
_SECRET_SIGNING = ("a minisign secret key", "--sign-key")
_KINDS = (
    ("AGE-SECRET-KEY-1", "an age identity", "--identity"),
    ("untrusted comment: minisign public key", "a minisign public key", "--trust"),
    ("untrusted comment: minisign", "a minisign secret key", "--sign-key"),
    ("age1", "an age recipient", "--recipient or --recipients-file"),
)


@contextlib.contextmanager
def _naming(where: str, text: str = "", wanted: str = "", *, usage: bool = False) -> Iterator[None]:
    """Errors about a key say which key: the option or the file it came from; and a key file
    of another kind says which kind it is and where it goes. ``usage``: the key is an
    argument's value, and an error about it is a usage error (exit code 2)."""
    try:
        yield
    except (KeyFileError, UsageError) as exc:
        hint = exc.hint
        kind = _kind_of(text)
        if kind is not None and kind[0] != wanted:
            hint = f"it holds {kind[0]}, which goes with {kind[1]}"
        raise (UsageError if usage else type(exc))(f"{where}: {exc.message}", hint=hint) from exc


def _kind_of(text: str) -> tuple[str, str] | None:
    first = next((s for s in map(str.strip, text.splitlines()) if s and s[0] != "#"), "")
    return next(((kind, option) for start, kind, option in _KINDS if first.startswith(start)), None)


def load_trusted(paths: Sequence[Path]) -> list[minisign.PublicKey]:
    if not paths:
        raise UsageError(
            "no trusted signer key given",
            hint="pass --trust signing.pub (the sender's public key); "
            "airgap never accepts bundles from just anyone",
        )
    trusted = []
    for path in paths:
        text = read_key_text(path, "trusted key")
        _check_guarded(path, "trusted key", "whom to trust")
        with _naming(f"trusted key {path}", text, "a minisign public key"):
            trusted.append(minisign.PublicKey.parse(text))
    return trusted


def write_key_files(directory: Path, files: Sequence[KeyFile], *, force: bool) -> None:
    """Write every file or none: existing keys are refused before anything is written. A name
    may hold a folder (``keys/identity.txt``); each folder is made private."""
    names = [f.name for f in files]
    if len(set(names)) != len(names):  # AIRGAP_CONFIG named like a key file, say
        raise UsageError(f"two of the files to write into {directory} have one name")
    folders = [name for name in names if (directory / name).is_dir()]
    if folders:
        raise StorageError(f"{directory / folders[0]} is a directory, not a file to replace")
    existing = [name for name in names if (directory / name).exists()]
    if existing and not force:
        raise StorageError(
            f"{directory} already holds {', '.join(existing)}",
            hint="use --force to replace them (the old keys are lost), or another directory",
        )
    private_dir(directory)
    for folder in sorted({(directory / key_file.name).parent for key_file in files}):
        if folder.exists() and (why := written_by_others(folder)):
            raise StorageError(
                f"not writing keys into {folder}: {why}, who could swap a key there (a "
                "recipient of theirs, before it is carried) or read it",
                hint="write them into a folder of your own that only you may write to (chmod go-w)",
            )
    ready: list[tuple[Path, Path]] = []
    try:
        for key_file in files:  # every file written and synced first, then all renamed
            path = directory / key_file.name
            private_dir(path.parent)
            ready.append((staged(path, key_file.text.encode(), key_file.mode), path))
        for tmp, path in ready:
            tmp.replace(path)
        for folder in {path.parent for _, path in ready}:  # the renames, on disk too
            sync_dir(folder)
    except OSError as exc:
        for tmp, _ in ready:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise StorageError(f"writing keys to {directory}: {exc.strerror or exc}") from exc
