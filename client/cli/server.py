"""``airgap serve`` and ``airgap user``: thin commands over :mod:`airgap.server`."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from airgap.client.cli.app import app, guarded
from airgap.client.terminal import say
from airgap.shared.errors import UsageError

if TYPE_CHECKING:  # the server is imported only by the commands that run it
    from airgap.server.layout import Layout
    from airgap.server.users import UserDB

DEFAULT_ROOT = Path("airgap-data")  # as airgap.server.config.ServeConfig.root
RootOption = Annotated[
    Path | None,
    typer.Option(
        "--root", envvar="AIRGAP_SERVE_ROOT", help=f"Server root (default ./{DEFAULT_ROOT})."
    ),
]


@app.command()
@guarded
def serve(
    config_file: Annotated[
        Path | None, typer.Option("--config", help="TOML file with settings (flags win).")
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option("--root", help=f"Server root directory (default ./{DEFAULT_ROOT})."),
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option("--listen", help="HOST:PORT (default 127.0.0.1:2121; port 0: any)."),
    ] = None,
    passive_ports: Annotated[
        str | None,
        typer.Option("--passive-ports", help="Passive data ports A-B (default 60000-60099)."),
    ] = None,
    masquerade_address: Annotated[
        str | None, typer.Option("--masquerade-address", help="Address announced for PASV.")
    ] = None,
    tls: Annotated[
        str | None, typer.Option("--tls", help="required, optional (default) or off.")
    ] = None,
    tls_reuse: Annotated[
        str | None,
        typer.Option(
            "--tls-reuse",
            help="required (default): a TLS data connection must resume its control "
            "connection's TLS session; off.",
        ),
    ] = None,
    anonymous: Annotated[
        str | None, typer.Option("--anonymous", help="off (default), upload or read-write.")
    ] = None,
    trusted_signer: Annotated[
        list[Path] | None,
        typer.Option("--trusted-signer", help="A signing.pub whose bundles may be published."),
    ] = None,
    max_connections: Annotated[
        int | None, typer.Option(help="Connections in total (default 256).")
    ] = None,
    max_connections_per_ip: Annotated[
        int | None, typer.Option(help="Connections per IP (default 16).")
    ] = None,
    max_sessions_per_account: Annotated[
        int | None, typer.Option(help="Sessions logged in to one account at once (default 16).")
    ] = None,
    max_login_failures: Annotated[
        int | None, typer.Option(help="Failed logins from one IP before a ban (default 5).")
    ] = None,
    login_failure_delay: Annotated[
        float | None, typer.Option(help="Seconds before a failed login is answered (default 2).")
    ] = None,
    ban_seconds: Annotated[
        float | None, typer.Option(help="Seconds a ban lasts (default 600).")
    ] = None,
    idle_timeout: Annotated[
        int | None, typer.Option(help="Seconds a control connection may idle (default 300).")
    ] = None,
    data_timeout: Annotated[
        int | None, typer.Option(help="Seconds a data connection may stall (default 120).")
    ] = None,
    quota_bytes: Annotated[
        int | None, typer.Option(help="Bytes each sender may hold (default 0: no quota).")
    ] = None,
    min_free_bytes: Annotated[
        int | None, typer.Option(help="Uploads stop below this much free disk (default 268435456).")
    ] = None,
    max_rate: Annotated[
        int | None,
        typer.Option(
            "--max-rate",
            metavar="BYTES_PER_SECOND",
            help="Throttle each data connection, each way; 0: no limit.",
        ),
    ] = None,
    partial_expiry: Annotated[
        int | None,
        typer.Option(
            "--partial-expiry",
            metavar="SECONDS",
            help="Delete .part uploads, and files of a sender's area, untouched this long "
            "(default 7 days); 0: never.",
        ),
    ] = None,
) -> None:
    """Run the FTP drop box (first start: makes a certificate and two accounts).

    Each setting comes from its flag, else its AIRGAP_SERVE_* variable (AIRGAP_SERVE_ROOT), else
    the --config file, else its default.
    """
    from airgap.server.config import load_config
    from airgap.server.serve import serve as run_server

    flags = {
        "root": None if root is None else str(root),
        "listen": listen,
        "passive_ports": passive_ports,
        "masquerade_address": masquerade_address,
        "tls": tls,
        "tls_reuse": tls_reuse,
        "anonymous": anonymous,
        "trusted_signers": [str(p) for p in trusted_signer or []],
        "max_connections": max_connections,
        "max_connections_per_ip": max_connections_per_ip,
        "max_sessions_per_account": max_sessions_per_account,
        "max_login_failures": max_login_failures,
        "login_failure_delay": login_failure_delay,
        "ban_seconds": ban_seconds,
        "idle_timeout": idle_timeout,
        "data_timeout": data_timeout,
        "quota_bytes": quota_bytes,
        "min_free_bytes": min_free_bytes,
        "max_rate": max_rate,
        "partial_expiry": partial_expiry,
    }
    config = load_config(flags, environ=os.environ, config_file=config_file, tell=say)
    run_server(config, say)


user_app = typer.Typer(help="Manage the accounts of `airgap serve`.", no_args_is_help=True)
app.add_typer(user_app, name="user")


def _layout(root: Path | None, *, provision: bool = False) -> Layout:
    """The root ``airgap serve`` prepared: a mistyped --root must not become a second one.

    ``provision`` (user add): an empty directory also does, for accounts made before the
    first start, which then makes none of its own.
    """
    from airgap.server.layout import existing

    return existing(root or DEFAULT_ROOT, provision=provision)


def _user_db(layout: Layout) -> UserDB:
    from airgap.server.users import UserDB

    return UserDB(layout.users_file)


def _forget_generated(layout: Layout, name: str) -> None:
    """A password no longer true leaves credentials.txt, so nobody logs in with a stale one."""
    from airgap.server import credentials

    path = layout.credentials_file
    with _user_db(layout).locked():  # another user command may rewrite the file meanwhile
        if not credentials.forget(path, name):
            return
    if path.exists():
        say(f"removed the stale password of {name} from {path}")
    else:
        say(f"removed {path}: it held no other password")


def _new_password(from_stdin: bool) -> tuple[str, bool]:
    """(password, generated); a password never comes from argv."""
    from airgap.server.users import check_password, generate_password

    if not from_stdin:
        return generate_password(), True
    if sys.stdin.isatty():  # typed: not shown (found in review), and asked twice
        password = getpass.getpass("password: ")
        if getpass.getpass("the same again: ") != password:
            raise UsageError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    check_password(password)
    return password, False


@user_app.command("add")
@guarded
def user_add(
    name: Annotated[str, typer.Argument(help="Account name.")],
    role: Annotated[str, typer.Option("--role", help="sender or receiver.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    root: RootOption = None,
) -> None:
    """Add an account; without --password-stdin a random password is printed once."""
    from airgap.server.users import Role

    try:
        chosen = Role(role)
    except ValueError as exc:
        raise UsageError(f"role {role!r} is not sender or receiver") from exc
    layout = _layout(root, provision=True)
    _user_db(layout).check_new(name)  # before a password is asked for (walkthrough)
    area = layout.sender_area(name)
    if chosen is Role.SENDER and (area.is_symlink() or (area.exists() and not area.is_dir())):
        raise UsageError(
            f"{area}, where sender {name}'s area goes, is a file (an anonymous upload?)",
            hint="move it away first, or choose another name",
        )
    password, generated = _new_password(password_stdin)
    _user_db(layout).add(name, chosen, password)
    say(f"added {chosen.value} {name}")
    _forget_generated(layout, name)  # a line left by an older airgap for a removed account
    if generated:
        print(f"password: {password}")


@user_app.command("list")
@guarded
def user_list(root: RootOption = None) -> None:
    """List accounts and their roles."""
    for user in sorted(_user_db(_layout(root)).load().values(), key=lambda u: u.name):
        print(f"{user.name}\t{user.role.value}")


@user_app.command("remove")
@guarded
def user_remove(
    name: Annotated[str, typer.Argument(help="The account to remove.")], root: RootOption = None
) -> None:
    """Remove an account (its files stay)."""
    layout = _layout(root)
    _user_db(layout).remove(name)
    say(f"removed {name}")
    _forget_generated(layout, name)


@user_app.command("passwd")
@guarded
def user_passwd(
    name: Annotated[str, typer.Argument(help="The account whose password changes.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    root: RootOption = None,
) -> None:
    """Set a new password; without --password-stdin a random one is printed once."""
    layout = _layout(root)
    password, generated = _new_password(password_stdin)
    _user_db(layout).set_password(name, password)
    say(f"changed the password of {name}")
    _forget_generated(layout, name)
    if generated:
        print(f"password: {password}")
