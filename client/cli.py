"""The ``airgap`` command line: parse options, call one function, map errors to exit codes.

The only module that knows about argv, the terminal and exit codes. Secrets never come from
argv: passphrases come from the environment (``AIRGAP_PASSPHRASE``, ``AIRGAP_SIGN_PASSPHRASE``)
or a prompt on the terminal. Payload and machine output (``--json``) go to stdout, everything
for humans to stderr.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec

import typer

from airgap.client import config, keyfiles
from airgap.client import fetch as fetching
from airgap.client.engine import Engine
from airgap.client.images import send_images
from airgap.client.ledger import Ledger
from airgap.client.places import Place, forget_spool, open_place, send_spool
from airgap.client.progress import counted
from airgap.client.send import Resuming, resume_send, send_files
from airgap.client.spool import SpooledTransport
from airgap.client.transport import MANIFEST_SUFFIX
from airgap.shared import age
from airgap.shared.bundle import EncodeOptions
from airgap.shared.errors import AirgapError, ExitCode, Interrupted, TransferError, UsageError
from airgap.shared.ids import new_bundle_id
from airgap.shared.keys import KeyFile, KeySet
from airgap.shared.manifest import Manifest
from airgap.shared.stages import DEFAULT_ZSTD_LEVEL
from airgap.shared.version import __version__

P = ParamSpec("P")

app = typer.Typer(
    name="airgap",
    help="Move container images and files across an air gap: signed, encrypted, resumable.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
)


def say(message: str) -> None:
    print(message, file=sys.stderr)


def guarded(command: Callable[P, None]) -> Callable[P, None]:
    """Let an interrupt inside a command reach :func:`main` as our error, not typer's Abort."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except KeyboardInterrupt as exc:
            raise Interrupted("interrupted") from exc

    return run


def _version(value: bool) -> None:
    if value:
        print(f"airgap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """airgap: FTP-based air-gap transfer of container images and files."""


def _secret(env: str, prompt: str, *, confirm: bool = False) -> Callable[[], bytes]:
    """A deferred secret: from the environment, else the terminal; never from argv."""

    def ask() -> bytes:
        value = os.environ.get(env)
        if value is None:
            if not sys.stdin.isatty():
                raise UsageError(f"{prompt} needed", hint=f"set {env} or run on a terminal")
            value = getpass.getpass(f"{prompt}: ")
            if confirm and getpass.getpass(f"{prompt} (again): ") != value:
                raise UsageError("the two passphrases differ")
        if not value:
            raise UsageError(f"{prompt} is empty")
        return value.encode()

    return ask


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "airgap"


def _emit(summary: dict[str, Any]) -> None:
    json.dump(summary, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


@app.command()
@guarded
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Directory for the four key files.")],
    force: Annotated[bool, typer.Option(help="Replace existing keys (they are lost).")] = False,
    protect: Annotated[
        bool, typer.Option(help="Encrypt signing.key with a passphrase (AIRGAP_SIGN_PASSPHRASE).")
    ] = False,
) -> None:
    """Make an age identity (decrypts) and a minisign key (signs) for this side."""
    keys = KeySet.generate()
    passphrase = _secret("AIRGAP_SIGN_PASSPHRASE", "signing key passphrase", confirm=True)
    files = keys.files(created=datetime.now(UTC), passphrase=passphrase() if protect else None)
    keyfiles.write_key_files(out, files, force=force)
    say(f"wrote {', '.join(f.name for f in files)} to {out}")
    say("give recipient.txt to senders (they encrypt to it);")
    say("give signing.pub to receivers (they trust it):")
    print(f"recipient: {keys.identity.recipient.encode()}")
    public = keys.signing.public_key
    print(f"signing key: {public.encode().splitlines()[1]} (id {public.key_id_hex})")


@app.command()
@guarded
def init(
    role: Annotated[str, typer.Option("--role", help="sender or receiver.")],
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Where (default ~/.config/airgap).")
    ] = None,
    server: Annotated[
        str | None, typer.Option("--server", help="This side's drop box URL (user@host).")
    ] = None,
    fingerprint: FingerprintOption = None,
    force: Annotated[bool, typer.Option(help="Replace existing keys and config.")] = False,
) -> None:
    """Set this side up once: keys, a config file, and what to carry to the other side."""
    if role not in ("sender", "receiver"):
        raise UsageError("--role is sender or receiver")
    directory = directory or config.default_path().parent
    text = config.initial_text(role=role, server=server, fingerprint=fingerprint)
    keys = KeySet.generate()
    files = keys.files(created=datetime.now(UTC))
    keyfiles.write_key_files(directory / "keys", files, force=force)
    extra = [
        KeyFile("config.toml", text, 0o644),
        KeyFile("recipients.txt", "# one age1... recipient a line: the receivers'\n", 0o644),
    ]
    keyfiles.write_key_files(directory, extra, force=force)
    (directory / "trusted").mkdir(exist_ok=True)
    say(f"wrote keys and config.toml to {directory}")
    if role == "sender":
        say(f"carry {directory}/keys/signing.pub to each receiver (into its trusted/);")
        say(f"put each receiver's recipient line into {directory}/recipients.txt")
    else:
        say(f"carry {directory}/keys/recipient.txt to each sender (into its recipients.txt);")
        say(f"put each sender's signing.pub into {directory}/trusted/")


@app.command()
@guarded
def send(
    images: Annotated[
        list[str] | None, typer.Argument(help="Images to send (one bundle), e.g. app:1.0.")
    ] = None,
    file: Annotated[
        list[Path] | None, typer.Option("--file", help="A file to send (repeatable).")
    ] = None,
    recipient: Annotated[
        list[str] | None, typer.Option("--recipient", "-r", help="An age1... recipient.")
    ] = None,
    recipients_file: Annotated[
        list[Path] | None, typer.Option("--recipients-file", "-R", help="age recipients file.")
    ] = None,
    sign_key: Annotated[
        Path | None, typer.Option("--sign-key", envvar="AIRGAP_SIGN_KEY", help="signing.key")
    ] = None,
    no_encrypt: Annotated[
        bool, typer.Option("--no-encrypt", help="Sign only (for guards that scan content).")
    ] = False,
    passphrase: Annotated[
        bool, typer.Option("--passphrase", help="Encrypt to a passphrase (AIRGAP_PASSPHRASE).")
    ] = False,
    level: Annotated[
        int | None, typer.Option(help="zstd level (default 1).", min=1, max=19)
    ] = None,
    to: Annotated[
        Path | None, typer.Option("--to", help="Directory (removable media) to write into.")
    ] = None,
    server: ServerOption = None,
    fingerprint: FingerprintOption = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Finish an interrupted send of bundle ID.")
    ] = None,
    quiet: QuietOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Write images (docker save) or files into a signed, encrypted bundle."""
    cfg = config.load().send
    place = _place(to, server, fingerprint, cfg.server, cfg.tls_fingerprint)
    if resume is not None:
        _resume(place, resume, as_json)
        return
    if bool(images) == bool(file):
        raise UsageError(
            "name images or --file paths, not both and not neither",
            hint="airgap send app:1.0 --to DIR, or airgap send --file PATH --to DIR",
        )
    sign_key = sign_key or cfg.sign_key
    if sign_key is None:
        raise UsageError(
            "no signing key", hint="pass --sign-key signing.key, or run airgap init once"
        )
    if not (recipient or recipients_file or no_encrypt or passphrase):
        recipient, recipients_file = list(cfg.recipient), list(cfg.recipients_file)
    key = keyfiles.load_signing_key(
        sign_key, _secret("AIRGAP_SIGN_PASSPHRASE", "signing key passphrase")
    )
    recipients = _recipients(recipient or [], recipients_file or [], no_encrypt, passphrase)
    level = level or cfg.level or DEFAULT_ZSTD_LEVEL
    options = EncodeOptions(recipients, level=level, threads=os.cpu_count() or 1)
    bundle_id = new_bundle_id()
    spool = send_spool(bundle_id) if place.server else None
    transport = open_place(place, "--to", spool=spool)
    resuming = Resuming(bundle_id, spool) if spool else None
    watch = functools.partial(counted, what="sending", total=None, quiet=quiet)
    try:
        if images:
            engine = Engine.from_env()
            try:
                manifest = send_images(
                    images,
                    transport,
                    engine=engine,
                    options=options,
                    key=key,
                    resuming=resuming,
                    watch=watch,
                )
            finally:
                engine.close()
        else:
            manifest = send_files(
                file or [], transport, options=options, key=key, resuming=resuming, watch=watch
            )
    except TransferError as exc:
        if spool and (spool / f"{bundle_id}{MANIFEST_SUFFIX}").exists():
            exc.hint = f"finish it later with: airgap send --resume {bundle_id} --server URL"
        raise
    finally:
        transport.close()
    if spool:
        forget_spool(spool)
    _sent(manifest, transport.describe(), as_json)


def _place(
    directory: Path | None,
    server: str | None,
    fingerprint: str | None,
    configured: str | None,
    configured_pin: str | None,
) -> Place:
    """Flags first; the configured drop box only when neither a directory nor a server is given."""
    if directory is None and server is None and configured:
        return Place(None, configured, fingerprint or configured_pin)
    return Place(directory, server, fingerprint)


def _trusted(paths: Sequence[Path]) -> list[Path]:
    """Trusted keys; a directory stands for every .pub file in it."""
    found: list[Path] = []
    for path in paths:
        found += sorted(path.glob("*.pub")) if path.is_dir() else [path]
    return found


def _sent(manifest: Manifest, where: str, as_json: bool) -> None:
    say(f"sent bundle {manifest.id}: {manifest.payload.size} bytes to {where}")
    if as_json:
        _emit(
            {
                "id": manifest.id,
                "payload_bytes": manifest.payload.size,
                "plaintext_bytes": manifest.plaintext_size,
                "images": [ref for image in manifest.images for ref in image.refs],
            }
        )


def _resume(place: Place, bundle_id: str, as_json: bool) -> None:
    if place.server is None:
        raise UsageError("--resume finishes a send to a drop box", hint="add --server URL")
    transport = open_place(place, "--to", spool=send_spool(bundle_id))
    if not isinstance(transport, SpooledTransport):
        raise UsageError("--resume needs --server")
    try:
        manifest = resume_send(bundle_id, transport)
    finally:
        transport.close()
    forget_spool(send_spool(bundle_id))
    _sent(manifest, transport.describe(), as_json)


def _recipients(
    values: Sequence[str], files: Sequence[Path], no_encrypt: bool, passphrase: bool
) -> list[age.Recipient]:
    chosen = sum([bool(values or files), no_encrypt, passphrase])
    if chosen != 1:
        raise UsageError(
            "choose exactly one of --recipient/--recipients-file, --passphrase, --no-encrypt",
            hint="airgap encrypts to the receiver's recipient.txt: --recipients-file recipient.txt",
        )
    if no_encrypt:
        return []
    if passphrase:
        secret = _secret("AIRGAP_PASSPHRASE", "bundle passphrase", confirm=True)()
        return [age.ScryptRecipient(secret)]
    return list(keyfiles.load_recipients(values, files))


ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server", envvar="AIRGAP_SERVER", help="Drop box: ftp:// or ftps://USER@HOST:PORT/."
    ),
]
FingerprintOption = Annotated[
    str | None,
    typer.Option(
        "--tls-fingerprint",
        envvar="AIRGAP_TLS_FINGERPRINT",
        help="sha256:... of the appliance's certificate (ftps://).",
    ),
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar (none either off a terminal).")
]
TrustOption = Annotated[
    list[Path] | None,
    typer.Option("--trust", envvar="AIRGAP_TRUST", help="A trusted sender's signing.pub."),
]
IdentityOption = Annotated[
    list[Path] | None,
    typer.Option("--identity", "-i", envvar="AIRGAP_IDENTITY", help="age identity file."),
]
FromOption = Annotated[
    Path | None, typer.Option("--from", help="Directory holding bundles (removable media).")
]


def _identities(paths: Sequence[Path]) -> list[age.Identity]:
    found: list[age.Identity] = list(keyfiles.load_identities(paths))
    if "AIRGAP_PASSPHRASE" in os.environ:
        found.append(age.ScryptIdentity(_secret("AIRGAP_PASSPHRASE", "bundle passphrase")()))
    return found


def _report(outcomes: Sequence[fetching.Outcome], verb: str, as_json: bool) -> None:
    for o in outcomes:
        if o.error is None:
            say(f"{verb} {o.bundle_id}" + "".join(f"\n  {_printable(p)}" for p in o.imported))
        else:
            say(f"airgap: error: bundle {o.bundle_id}: {o.error.message}")
            if o.error.hint:
                say(f"airgap: hint: {o.error.hint}")
    if not outcomes:
        say("nothing to do: no new published bundles")
    if as_json:
        _emit(
            {
                "bundles": [
                    {
                        "id": o.bundle_id,
                        "ok": o.error is None,
                        "error": None if o.error is None else o.error.message,
                        "imported": list(o.imported),
                    }
                    for o in outcomes
                ]
            }
        )
    codes = [o.error.exit_code for o in outcomes if o.error is not None]
    if codes:
        raise typer.Exit(int(codes[0]))


@app.command()
@guarded
def fetch(
    ids: Annotated[list[str] | None, typer.Argument(help="Bundle ids (default: all new).")] = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", help="Where files bundles are unpacked.")
    ] = None,
    identity: IdentityOption = None,
    trust: TrustOption = None,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", envvar="AIRGAP_STATE_DIR", help="Ledger dir.")
    ] = None,
    source: FromOption = None,
    server: ServerOption = None,
    fingerprint: FingerprintOption = None,
    consume: Annotated[
        bool, typer.Option("--consume", help="Delete each bundle from the source once imported.")
    ] = False,
    keep: Annotated[
        Path | None, typer.Option("--keep", help="Keep a copy of each verified bundle here.")
    ] = None,
    quiet: QuietOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Verify every new bundle, then load its images into Docker or unpack its files."""
    cfg = config.load().fetch
    trusted = keyfiles.load_trusted(_trusted(trust or cfg.trust))
    ledger = Ledger((state_dir or _default_state_dir()) / "imported.jsonl")
    engine = functools.cache(Engine.from_env)
    output_dir = output_dir or cfg.output_dir
    identity = identity or list(cfg.identity)
    place = _place(source, server, fingerprint, cfg.server, cfg.tls_fingerprint)
    transport = open_place(place, "--from")
    try:
        outcomes = fetching.fetch_bundles(
            transport,
            fetching.Destination(
                output_dir,
                engine,
                consume=consume,
                keep=keep,
                watch=lambda chunks, total: counted(
                    chunks, what="fetching", total=total, quiet=quiet
                ),
            ),
            identities=_identities(identity or []),
            trusted=trusted,
            ledger=ledger,
            only=ids or [],
        )
    finally:
        transport.close()
    _report(outcomes, "fetched", as_json)


@app.command()
@guarded
def verify(
    ids: Annotated[list[str] | None, typer.Argument(help="Bundle ids (default: all).")] = None,
    identity: IdentityOption = None,
    trust: TrustOption = None,
    source: FromOption = None,
    server: ServerOption = None,
    fingerprint: FingerprintOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Check bundles without importing (with --identity, decrypt and check the plaintext too)."""
    cfg = config.load().fetch
    trusted = keyfiles.load_trusted(_trusted(trust or cfg.trust))
    place = _place(source, server, fingerprint, cfg.server, cfg.tls_fingerprint)
    transport = open_place(place, "--from")
    try:
        outcomes = fetching.verify_bundles(
            transport, identities=_identities(identity or []), trusted=trusted, only=ids or []
        )
    finally:
        transport.close()
    _report(outcomes, "verified", as_json)


@app.command(name="ls")
@guarded
def list_command(
    trust: TrustOption = None,
    source: FromOption = None,
    server: ServerOption = None,
    fingerprint: FingerprintOption = None,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", envvar="AIRGAP_STATE_DIR", help="Ledger dir.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """List published bundles: size, content, signer and state (checked with --trust)."""
    cfg = config.load().fetch
    trust_files = _trusted(trust or cfg.trust)
    trusted = keyfiles.load_trusted(trust_files) if trust_files else []
    imported = Ledger((state_dir or _default_state_dir()) / "imported.jsonl").ids()
    place = _place(source, server, fingerprint, cfg.server, cfg.tls_fingerprint)
    transport = open_place(place, "--from")
    try:
        listing = fetching.list_bundles(transport, trusted=trusted, imported=imported)
    finally:
        transport.close()
    rows = [_row(item) for item in listing]
    if as_json:
        _emit({"bundles": rows})
        return
    for row in rows:
        print(
            f"{row['id']}  {row['state']:<10}  {row['payload_bytes'] or '-':>12}  "
            f"{row['signer'] or '-':<16}  " + _printable(" ".join(row["content"]) or row["detail"])
        )
    if not rows:
        say("no published bundles")


def _printable(text: str) -> str:
    """Text from a bundle, safe for a terminal: no escape sequences reach it."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _row(item: fetching.Listing) -> dict[str, Any]:
    manifest = item.manifest
    content: list[str] = []
    if manifest is not None:
        content = [r for i in manifest.images for r in i.refs] or [f.name for f in manifest.files]
    return {
        "id": item.bundle_id,
        "state": item.state,
        "payload_bytes": manifest.payload.size if manifest else None,
        "signer": manifest.signer if manifest else None,
        "content": content,
        "detail": item.detail,
    }


RootOption = Annotated[
    Path | None,
    typer.Option("--root", envvar="AIRGAP_SERVE_ROOT", help="Server root (default ./airgap-data)."),
]


@app.command()
@guarded
def serve(
    config_file: Annotated[
        Path | None, typer.Option("--config", help="TOML file with settings (flags win).")
    ] = None,
    root: Annotated[Path | None, typer.Option("--root", help="Server root directory.")] = None,
    listen: Annotated[str | None, typer.Option("--listen", help="HOST:PORT (port 0: any).")] = None,
    passive_ports: Annotated[
        str | None, typer.Option("--passive-ports", help="Passive data ports A-B.")
    ] = None,
    masquerade_address: Annotated[
        str | None, typer.Option("--masquerade-address", help="Address announced for PASV.")
    ] = None,
    tls: Annotated[str | None, typer.Option("--tls", help="required, optional or off.")] = None,
    anonymous: Annotated[
        str | None, typer.Option("--anonymous", help="off, upload or read-write.")
    ] = None,
    trusted_signer: Annotated[
        list[Path] | None,
        typer.Option("--trusted-signer", help="A signing.pub whose bundles may be published."),
    ] = None,
    max_connections: Annotated[int | None, typer.Option(help="Connections in total.")] = None,
    max_connections_per_ip: Annotated[int | None, typer.Option(help="Connections per IP.")] = None,
    max_login_failures: Annotated[int | None, typer.Option(help="Failures before a ban.")] = None,
    login_failure_delay: Annotated[
        float | None, typer.Option(help="Seconds before a failed login is answered.")
    ] = None,
    ban_seconds: Annotated[float | None, typer.Option(help="How long a ban lasts.")] = None,
    idle_timeout: Annotated[int | None, typer.Option(help="Control idle timeout (s).")] = None,
    data_timeout: Annotated[int | None, typer.Option(help="Stalled data timeout (s).")] = None,
    quota_bytes: Annotated[int | None, typer.Option(help="Per-sender quota, 0: none.")] = None,
    min_free_bytes: Annotated[int | None, typer.Option(help="Free-disk watermark.")] = None,
) -> None:
    """Run the FTP drop box (first start: makes a certificate and two accounts)."""
    from airgap.server.config import load_config
    from airgap.server.serve import serve as run_server

    flags = {
        "root": None if root is None else str(root),
        "listen": listen,
        "passive_ports": passive_ports,
        "masquerade_address": masquerade_address,
        "tls": tls,
        "anonymous": anonymous,
        "trusted_signers": [str(p) for p in trusted_signer or []],
        "max_connections": max_connections,
        "max_connections_per_ip": max_connections_per_ip,
        "max_login_failures": max_login_failures,
        "login_failure_delay": login_failure_delay,
        "ban_seconds": ban_seconds,
        "idle_timeout": idle_timeout,
        "data_timeout": data_timeout,
        "quota_bytes": quota_bytes,
        "min_free_bytes": min_free_bytes,
    }
    config = load_config(flags, environ=os.environ, config_file=config_file)
    run_server(config, say)


user_app = typer.Typer(help="Manage the accounts of `airgap serve`.", no_args_is_help=True)
app.add_typer(user_app, name="user")


def _user_db(root: Path | None) -> Any:
    from airgap.server.layout import resolved
    from airgap.server.users import UserDB

    layout = resolved(root or Path("airgap-data"))
    layout.create()
    return UserDB(layout.users_file)


def _new_password(from_stdin: bool) -> tuple[str, bool]:
    """(password, generated); a password never comes from argv."""
    from airgap.server.users import check_password, generate_password

    if not from_stdin:
        return generate_password(), True
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
    password, generated = _new_password(password_stdin)
    _user_db(root).add(name, chosen, password)
    say(f"added {chosen.value} {name}")
    if generated:
        print(f"password: {password}")


@user_app.command("list")
@guarded
def user_list(root: RootOption = None) -> None:
    """List accounts and their roles."""
    for user in sorted(_user_db(root).load().values(), key=lambda u: u.name):
        print(f"{user.name}\t{user.role.value}")


@user_app.command("remove")
@guarded
def user_remove(name: Annotated[str, typer.Argument()], root: RootOption = None) -> None:
    """Remove an account (its files stay)."""
    _user_db(root).remove(name)
    say(f"removed {name}")


@user_app.command("passwd")
@guarded
def user_passwd(
    name: Annotated[str, typer.Argument()],
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
    root: RootOption = None,
) -> None:
    """Set a new password; without --password-stdin a random one is printed once."""
    password, generated = _new_password(password_stdin)
    _user_db(root).set_password(name, password)
    say(f"changed the password of {name}")
    if generated:
        print(f"password: {password}")


def _fail(exc: AirgapError) -> NoReturn:
    say(f"airgap: error: {exc.message}")
    if exc.hint:
        say(f"airgap: hint: {exc.hint}")
    sys.exit(int(exc.exit_code))


def main() -> NoReturn:
    """Entry point: the one place where errors become messages and exit codes."""
    try:
        app()  # standalone: typer itself answers --help and bad usage (exit 2)
    except AirgapError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        _fail(Interrupted("interrupted"))
    sys.exit(int(ExitCode.OK))
