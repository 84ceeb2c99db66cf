"""The client's configuration file: what plain ``airgap send app:1.0`` and ``airgap fetch`` use.

``$AIRGAP_CONFIG``, else ``$XDG_CONFIG_HOME/airgap/config.toml`` (``~/.config/airgap``).
Flags and environment variables win over it. Unknown keys are errors, not silently ignored
typos. It never holds a password or a secret key, only paths to key files (and to a file
holding the drop box's password, used for that server alone)::

    [send]
    server = "ftps://sender@dropbox.example:2121/"
    tls_fingerprint = "sha256:…"
    password_file = "keys/dropbox-password"  # 0600, the password on its first line
    recipients_file = ["recipients.txt"]     # relative paths: beside this file
    sign_key = "keys/signing.key"

    [fetch]
    server = "ftps://receiver@dropbox.example:2121/"
    tls_fingerprint = "sha256:…"
    identity = ["keys/identity.txt"]
    trust = ["trusted/sender.pub"]
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airgap.shared.errors import UsageError
from airgap.shared.owners import written_by_others

SEND_KEYS = {
    "server",
    "tls_fingerprint",
    "password_file",
    "recipients_file",
    "recipient",
    "sign_key",
    "level",
}
FETCH_KEYS = {"server", "tls_fingerprint", "password_file", "identity", "trust", "output_dir"}
_SECTIONS = (("send", SEND_KEYS), ("fetch", FETCH_KEYS))


@dataclass(frozen=True)
class SendSettings:
    server: str | None = None
    tls_fingerprint: str | None = None
    password_file: Path | None = None  # the server's password, for that server only
    recipients_file: tuple[Path, ...] = ()
    recipient: tuple[str, ...] = ()
    sign_key: Path | None = None
    level: int | None = None


@dataclass(frozen=True)
class FetchSettings:
    server: str | None = None
    tls_fingerprint: str | None = None
    password_file: Path | None = None
    identity: tuple[Path, ...] = ()
    trust: tuple[Path, ...] = ()
    output_dir: Path | None = None


@dataclass(frozen=True)
class Settings:
    path: Path | None = None
    send: SendSettings = field(default_factory=SendSettings)
    fetch: FetchSettings = field(default_factory=FetchSettings)


def default_path() -> Path:
    if os.environ.get("AIRGAP_CONFIG"):
        return Path(os.environ["AIRGAP_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "airgap" / "config.toml"


def load(path: Path | None = None) -> Settings:
    """The settings in ``path`` (default: :func:`default_path`); none if it does not exist,
    unless AIRGAP_CONFIG names it: a mistyped name would quietly leave every setting out."""
    path = path or default_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if os.environ.get("AIRGAP_CONFIG"):
            raise UsageError(
                f"config {path}, which AIRGAP_CONFIG names, does not exist",
                hint="check the name, or unset AIRGAP_CONFIG (airgap init makes the file)",
            ) from None
        return Settings()
    except OSError as exc:
        raise UsageError(f"config {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"config {path}: {exc}") from exc
    if why := written_by_others(path):  # it names the keys to trust and to encrypt to
        raise UsageError(
            f"config {path}: {why}",
            hint="keep it in a folder of your own that only you may write to (chmod go-w)",
        )
    _only(data, {"send", "fetch"}, path, "")
    send, fetch = _table(data, "send", path), _table(data, "fetch", path)
    _only(send, SEND_KEYS, path, "[send] ")
    _only(fetch, FETCH_KEYS, path, "[fetch] ")
    here = path.parent
    return Settings(
        path=path,
        send=SendSettings(
            server=_str(send, "server", path),
            tls_fingerprint=_pin(send, path, "[send] "),
            password_file=_path(send, "password_file", here, path),
            recipients_file=_paths(send, "recipients_file", here, path),
            recipient=tuple(_strs(send, "recipient", path)),
            sign_key=_path(send, "sign_key", here, path),
            level=_level(send, path),
        ),
        fetch=FetchSettings(
            server=_str(fetch, "server", path),
            tls_fingerprint=_pin(fetch, path, "[fetch] "),
            password_file=_path(fetch, "password_file", here, path),
            identity=_paths(fetch, "identity", here, path),
            trust=_paths(fetch, "trust", here, path),
            output_dir=_path(fetch, "output_dir", here, path),
        ),
    )


def _only(table: dict[str, Any], keys: set[str], path: Path, where: str) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        sections = [f"[{name}]" for name, known in _SECTIONS if unknown[0] in known]
        raise UsageError(
            f"config {path}: {where}unknown key {unknown[0]!r}",
            hint=f"it belongs under {' or '.join(sections)}" if not where and sections else None,
        )


def _pin(table: dict[str, Any], path: Path, where: str) -> str | None:
    """A tls_fingerprint, refused here, where the file can be named, if it cannot be one."""
    value = _str(table, "tls_fingerprint", path)
    if value is None:
        return None
    from airgap.client.ftp import is_fingerprint  # ssl and ftplib: only where a pin is set

    if not is_fingerprint(value):
        raise UsageError(
            f"config {path}: {where}tls_fingerprint is not sha256: and 64 hex digits",
            hint="copy it whole from what airgap serve printed",
        )
    return value


def _table(data: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise UsageError(f"config {path}: [{name}] must be a table")
    return value


def _str(table: dict[str, Any], key: str, path: Path) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise UsageError(f"config {path}: {key} must be a string")
    return value


def _strs(table: dict[str, Any], key: str, path: Path) -> list[str]:
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"config {path}: {key} must be a string or a list of strings")
    return value


def _int(table: dict[str, Any], key: str, path: Path) -> int | None:
    value = table.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise UsageError(f"config {path}: {key} must be a whole number")
    return value


def _level(table: dict[str, Any], path: Path) -> int | None:
    """zstd's level, 1 to 19 as --level takes it (the manifest signs what is given here)."""
    level = _int(table, "level", path)
    if level is not None and not 1 <= level <= 19:
        raise UsageError(f"config {path}: level must be from 1 to 19, not {level}")
    return level


def _path(table: dict[str, Any], key: str, here: Path, path: Path) -> Path | None:
    value = _str(table, key, path)
    return None if value is None else here / Path(value).expanduser()


def _paths(table: dict[str, Any], key: str, here: Path, path: Path) -> tuple[Path, ...]:
    return tuple(here / Path(v).expanduser() for v in _strs(table, key, path))


def initial_text(*, role: str, server: str | None, fingerprint: str | None) -> str:
    """The config file ``airgap init`` writes for a sender or a receiver."""
    section = "send" if role == "sender" else "fetch"
    lines = [
        "# airgap client settings; flags and AIRGAP_* variables win over them.",
        "# Paths are relative to this file.",
        "",
        "[send]",
        'sign_key = "keys/signing.key"',
        'recipients_file = ["recipients.txt"]  # the receivers\' recipient.txt lines',
        "",
        "[fetch]",
        'identity = ["keys/identity.txt"]',
        'trust = ["trusted"]  # every .pub file in it: the senders\' signing.pub',
        "",
    ]
    if server:
        at = lines.index(f"[{section}]") + 1
        extra = [f"server = {toml_string(server)}"]
        if fingerprint:
            extra.append(f"tls_fingerprint = {toml_string(fingerprint)}")
        extra.append('# password_file = "keys/dropbox-password"  # 0600, the password alone')
        lines[at:at] = extra
    return "\n".join(lines)


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string, or a usage error for what would need escaping."""
    if any(ch in text for ch in '"\\\n\r') or not text.isprintable():
        raise UsageError(f"{text!r} cannot go into the config file as it is")
    return f'"{text}"'
