"""The appliance's accounts: names, roles and scrypt password hashes in ``state/users.json``.

A password is stored only as ``hashlib.scrypt`` output with a random 16-byte salt; checks are in
constant time. The file is written whole (to a temporary file, then renamed) with mode 0600.
This module never logs, prints or returns a password it was given, and never keeps one.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airgap.server import secretfile
from airgap.shared import locks
from airgap.shared.errors import StorageError, UsageError

# 2**15 x 8 x 1: 32 MiB and ~0.1 s per check; slow enough to hurt guessing, fast for a login.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
_MAXMEM = 64 * 1024 * 1024
_SALT_BYTES = 16
_HASH_BYTES = 32
MAX_PASSWORD = 1024
#: Names that are FTP conventions for "no account"; never real users here.
RESERVED = frozenset({"anonymous", "ftp"})
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
FORMAT = 1


class Role(enum.StrEnum):
    SENDER = "sender"
    RECEIVER = "receiver"


@dataclass(frozen=True)
class PasswordHash:
    salt: bytes
    digest: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    @classmethod
    def make(cls, password: str) -> PasswordHash:
        check_password(password)
        salt = secrets.token_bytes(_SALT_BYTES)
        return cls(salt=salt, digest=_scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))

    def matches(self, password: str) -> bool:
        if not password or len(password) > MAX_PASSWORD:
            return False
        candidate = _scrypt(password, self.salt, self.n, self.r, self.p)
        return hmac.compare_digest(candidate, self.digest)


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    password: PasswordHash

    def __repr__(self) -> str:  # the hash is not a secret, but it has no business in logs
        return f"User(name={self.name!r}, role={self.role.value!r})"


def could_be_name(name: str) -> bool:
    """Whether ``name`` is shaped like a user name, whether or not such a user exists."""
    return _NAME.fullmatch(name) is not None


def check_name(name: str) -> str:
    if not could_be_name(name) or name in RESERVED:
        raise UsageError(
            f"{name!r} is not a valid user name",
            hint="lower-case letters, digits, '-' and '_', starting with a letter, at most 32",
        )
    return name


def check_password(password: str) -> None:
    if len(password) < 8:
        raise UsageError("password too short", hint="use at least 8 characters")
    if len(password) > MAX_PASSWORD or any(c in password for c in "\0\r\n"):
        raise UsageError("password too long or holds NUL, CR or LF")


def generate_password() -> str:
    return secrets.token_urlsafe(18)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=_HASH_BYTES
    )


class UserDB:
    """The users file; every method re-reads it, so ``airgap user`` changes apply at once to
    new logins (sessions already logged in see them through :mod:`airgap.server.accounts`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, User]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StorageError(f"reading {self.path}: {exc.strerror or exc}") from exc
        try:
            return _parse(json.loads(data.decode("utf-8")))
        except (ValueError, KeyError, TypeError, AttributeError, UsageError, RecursionError) as exc:
            # whatever an edit by hand left there (a bad name, a list for a table)
            raise StorageError(f"{self.path} is not a valid users file") from exc

    def get(self, name: str) -> User | None:
        return self.load().get(name)

    def check_new(self, name: str, users: dict[str, User] | None = None) -> None:
        """Refuse a name that cannot be an account's, or is one's already."""
        if check_name(name) in (self.load() if users is None else users):
            raise UsageError(f"user {name!r} exists", hint="airgap user passwd, or user remove")

    def add(self, name: str, role: Role, password: str) -> User:
        hashed = PasswordHash.make(password)  # slow: before the lock, not under it
        with self.locked():
            users = self.load()
            self.check_new(name, users)
            users[name] = User(name, role, hashed)
            self._save(users)
        return users[name]

    def set_password(self, name: str, password: str) -> None:
        hashed = PasswordHash.make(password)
        with self.locked():
            users = self.load()
            if name not in users:
                raise UsageError(f"no user {name!r}")
            users[name] = User(name, users[name].role, hashed)
            self._save(users)

    def remove(self, name: str) -> None:
        with self.locked():
            users = self.load()
            if users.pop(name, None) is None:
                raise UsageError(f"no user {name!r}")
            self._save(users)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``users.json.lock`` beside the file: each change reads, changes and writes
        the whole file, so two at once (two ``airgap user`` commands) would keep only one.
        Found in review: a password change could be undone that way, its new password
        refused and the old one let in again. Not reentrant."""
        path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"locking {path}: {exc.strerror or exc}") from exc
        with locks.held(path, f"locking {path}"):
            yield

    def _save(self, users: dict[str, User]) -> None:
        data = json.dumps(_dump(users), indent=2, sort_keys=True) + "\n"
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            secretfile.replace(self.path, data)
        except OSError as exc:
            raise StorageError(f"writing {self.path}: {exc.strerror or exc}") from exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _dump(users: dict[str, User]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "users": {
            u.name: {
                "role": u.role.value,
                "scrypt": {
                    "n": u.password.n,
                    "r": u.password.r,
                    "p": u.password.p,
                    "salt": _b64(u.password.salt),
                    "hash": _b64(u.password.digest),
                },
            }
            for u in users.values()
        },
    }


def _parse(obj: Any) -> dict[str, User]:
    if obj["format"] != FORMAT:
        raise ValueError("unknown users file format")
    users = {}
    for name, entry in obj["users"].items():
        s = entry["scrypt"]
        # Bounds, so a tampered file cannot make a login take minutes or gigabytes.
        if (
            not (s["n"] >= 2 and s["r"] >= 1 and 1 <= s["p"] <= 4)
            or 128 * s["n"] * s["r"] > _MAXMEM
        ):
            raise ValueError("scrypt parameters out of range")
        digest = PasswordHash(
            salt=base64.b64decode(s["salt"], validate=True),
            digest=base64.b64decode(s["hash"], validate=True),
            n=s["n"],
            r=s["r"],
            p=s["p"],
        )
        users[check_name(name)] = User(name, Role(entry["role"]), digest)
    return users
