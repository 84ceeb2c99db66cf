"""``airgap serve`` settings: embedded defaults, a TOML file, ``AIRGAP_SERVE_*``, flags.

Precedence is flags > environment > TOML file (``--config``) > defaults, setting by setting.
Every value is parsed and range-checked here, once, into the frozen :class:`ServeConfig`; the
rest of the server never sees a raw string. This module never opens a socket and holds no
secrets (passwords live in the users file, never in configuration).
"""

from __future__ import annotations

import enum
import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from airgap.shared.errors import ServerError, UsageError
from airgap.shared.owners import written_by_others

ENV_PREFIX = "AIRGAP_SERVE_"
#: The hint for a file that decides whom to let in or trust and that others could write.
GUARDED = (
    "keep it where only the server's user (or root) may write it: chown it to that user, chmod go-w"
)
T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)


class TlsMode(enum.StrEnum):
    REQUIRED = "required"
    OPTIONAL = "optional"
    OFF = "off"


class TlsReuse(enum.StrEnum):
    """Whether a TLS data connection must resume its control connection's TLS session."""

    REQUIRED = "required"
    OFF = "off"


class AnonymousMode(enum.StrEnum):
    OFF = "off"
    UPLOAD = "upload"
    READ_WRITE = "read-write"


@dataclass(frozen=True)
class ServeConfig:
    root: Path = Path("airgap-data")
    host: str = "127.0.0.1"
    port: int = 2121
    passive_ports: tuple[int, int] = (60000, 60099)
    masquerade_address: str | None = None
    tls: TlsMode = TlsMode.OPTIONAL
    tls_reuse: TlsReuse = TlsReuse.REQUIRED
    anonymous: AnonymousMode = AnonymousMode.OFF
    trusted_signers: tuple[Path, ...] = ()
    max_connections: int = 256
    max_connections_per_ip: int = 16
    max_sessions_per_account: int = 16  # logged in at once, each holding a passive port at most
    max_login_failures: int = 5  # per IP, then a ban
    login_failure_delay: float = 2.0  # seconds before a failed login is answered
    ban_seconds: float = 600.0
    idle_timeout: int = 300  # control connection, seconds
    data_timeout: int = 120  # stalled data connection, seconds
    quota_bytes: int = 0  # per sender area; 0 = none
    min_free_bytes: int = 256 * 1024 * 1024  # refuse uploads below this much free disk
    max_rate: int = 0  # bytes per second, each way, per data connection; 0 = unlimited
    partial_expiry: int = 7 * 24 * 3600  # seconds an unfinished upload may sit; 0 = for ever
    workers: int = 2  # threads for hashing and publishing, and as many for password checks


#: setting name -> parser of its text (flags and environment) or TOML value.
def _listen(value: Any) -> tuple[str, int]:
    text = _text(value)
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise ValueError("expected HOST:PORT")
    ipaddress.ip_address(host)  # a literal address: no name lookups for a listening socket
    return host, _port(port, allow_zero=True)


def _port(value: Any, *, allow_zero: bool = False) -> int:
    port = _int(value)
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ValueError("port out of range")
    return port


def _port_range(value: Any) -> tuple[int, int]:
    low, sep, high = _text(value).partition("-")
    first, last = _port(low), _port(high if sep else low)
    if first > last or first < 1024:
        raise ValueError("expected A-B with 1024 <= A <= B <= 65535")
    return first, last


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value.strip()


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    try:
        number = value if isinstance(value, int) else int(_text(value))
    except ValueError:
        raise ValueError("expected a whole number") from None
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _float(value: Any) -> float:
    try:
        number = float(value) if isinstance(value, int | float) else float(_text(value))
    except ValueError:
        raise ValueError("expected a number") from None
    if not 0 <= number < 1e7:
        raise ValueError("out of range")
    return number


def _paths(value: Any) -> tuple[Path, ...]:
    items = value if isinstance(value, list) else _text(value).split(os.pathsep)
    return tuple(Path(_text(i)) for i in items if _text(i))


def _address(value: Any) -> str:
    text = _text(value)
    ipaddress.ip_address(text)
    return text


def _enum(kind: type[E]) -> Callable[[Any], E]:
    def parse(value: Any) -> E:
        text = _text(value).lower()
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"choose {', '.join(str(m.value) for m in kind)}") from None

    return parse


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "root": lambda v: Path(_text(v)),
    "passive_ports": _port_range,
    "masquerade_address": _address,
    "tls": _enum(TlsMode),
    "tls_reuse": _enum(TlsReuse),
    "anonymous": _enum(AnonymousMode),
    "trusted_signers": _paths,
    "max_connections": _int,
    "max_connections_per_ip": _int,
    "max_sessions_per_account": _int,
    "max_login_failures": _int,
    "login_failure_delay": _float,
    "ban_seconds": _float,
    "idle_timeout": _int,
    "data_timeout": _int,
    "quota_bytes": _int,
    "min_free_bytes": _int,
    "max_rate": _int,
    "partial_expiry": _int,
    "workers": _int,
}
#: "listen" sets host and port together.
SETTINGS = ("listen", *_PARSERS)


def load_config(
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str],
    config_file: Path | None = None,
    tell: Callable[[str], None] = lambda warning: None,
) -> ServeConfig:
    """Merge the layers; ``flags`` holds only what was given on the command line. A variable
    that overrides the file is told: an image's ENV is easily forgotten (the server image
    sets AIRGAP_SERVE_LISTEN, and a file's ``listen`` on loopback would go unheeded)."""
    merged: dict[str, tuple[str, Any]] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = [
        (str(config_file), _anchored(_read_toml(config_file), config_file) if config_file else {}),
        ("environment", _from_env(environ)),
        ("command line", {k: v for k, v in flags.items() if v is not None and v != []}),
    ]
    for source, layer in layers:
        for key, value in layer.items():
            if key not in SETTINGS:
                named = _named(source, key)
                raise UsageError(
                    f"{source}: unknown setting {named!r}",
                    hint="the settings: "
                    + ", ".join(_named(source, k).removeprefix(ENV_PREFIX) for k in SETTINGS)
                    + (f" (each after {ENV_PREFIX})" if source == "environment" else ""),
                )
            merged[key] = (source, value)
    in_file = layers[0][1]
    for key, (source, raw) in merged.items():  # what the environment decided, over the file
        if source == "environment" and key in in_file and _differ(key, in_file[key], raw):
            tell(
                f"airgap: warning: {ENV_PREFIX}{key.upper()}={raw} (the environment) overrides "
                f"{key.replace('_', '-')} = {in_file[key]!r} in {config_file}"
            )
    values: dict[str, Any] = {}
    for key, (source, raw) in merged.items():
        try:
            if key == "listen":
                values["host"], values["port"] = _listen(raw)
            else:
                values[key] = _PARSERS[key](raw)
        except ValueError as exc:
            raise UsageError(f"{source}: bad {_named(source, key)} {raw!r}: {exc}") from exc
    config = ServeConfig(**values)
    _check(config)
    return config


def _anchored(settings: dict[str, Any], config_file: Path) -> dict[str, Any]:
    """The file's relative paths taken from its own folder, as the client's config file's
    are, not from wherever serve was started (walkthrough: a new root appeared there)."""

    def anchor(value: Any) -> Any:
        if isinstance(value, list):
            return [anchor(item) for item in value]
        if isinstance(value, str) and value.strip() and not Path(value.strip()).is_absolute():
            return str(config_file.parent / value.strip())
        return value

    return {k: anchor(v) if k in ("root", "trusted_signers") else v for k, v in settings.items()}


def _named(source: str, key: str) -> str:
    """A setting as its source spells it: ``AIRGAP_SERVE_QUOTA_BYTES``, or ``quota-bytes``."""
    return ENV_PREFIX + key.upper() if source == "environment" else key.replace("_", "-")


def _differ(key: str, one: Any, other: Any) -> bool:
    """Whether two raw values of setting ``key`` mean different things (0256 and 256 do not)."""
    parse = _listen if key == "listen" else _PARSERS.get(key)
    if parse is None:
        return True
    try:
        return bool(parse(one) != parse(other))
    except ValueError:
        return True


def _from_env(environ: Mapping[str, str]) -> dict[str, str]:
    found = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            if not value:  # AIRGAP_SERVE_ROOT= served the current folder (found in review)
                raise UsageError(
                    f"{name} is set, and empty", hint=f"unset {name}, or give it a value"
                )
            key = name[len(ENV_PREFIX) :].lower()
            found[key] = value
    return found


def _read_toml(path: Path) -> dict[str, Any]:
    # It may turn anonymous uploads on, or name signers; a container's may be mounted
    # read-only from its host.
    if why := written_by_others(path, mounted=True):
        raise ServerError(
            f"{path} decides whom the drop box lets in and trusts, and {why}",
            hint=GUARDED,
        )
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from exc
    # TOML keys may use dashes like the flags do.
    return {k.replace("-", "_"): v for k, v in data.items()}


def _check(config: ServeConfig) -> None:
    limits = (
        config.max_connections,
        config.max_connections_per_ip,
        config.max_sessions_per_account,
    )
    if min(limits) < 1:
        raise UsageError("connection limits must be at least 1")
    if config.max_login_failures < 1 or config.workers < 1:
        raise UsageError("max-login-failures and workers must be at least 1")
    if config.idle_timeout < 1 or config.data_timeout < 1:
        raise UsageError("timeouts must be at least one second")


def describe(config: ServeConfig) -> dict[str, str]:
    """Every setting as text, for the start-up log."""
    return {f.name: str(getattr(config, f.name)) for f in fields(config)}
