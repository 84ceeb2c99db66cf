"""``airgap keygen`` and ``airgap init``: this side's keys, and its one-time set-up."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from airgap.client import config, keyfiles
from airgap.client.cli.app import FingerprintOption, app, default_state_dir, guarded, secret
from airgap.client.places import Place
from airgap.client.private import private_dir
from airgap.client.terminal import say
from airgap.shared.errors import StorageError, UsageError
from airgap.shared.keys import KeyFile, KeySet


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
    passphrase = secret("AIRGAP_SIGN_PASSPHRASE", "signing key passphrase", confirm=True)
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
        Path | None,
        typer.Option(
            "--dir",
            help="Where (default: beside $AIRGAP_CONFIG, else $XDG_CONFIG_HOME/airgap, "
            "else ~/.config/airgap).",
        ),
    ] = None,
    server: Annotated[
        str | None, typer.Option("--server", help="This side's drop box URL (user@host).")
    ] = None,
    fingerprint: FingerprintOption = None,
    force: Annotated[
        bool,
        typer.Option(help="Replace existing keys and config (recipients.txt and trusted/ stay)."),
    ] = False,
) -> None:
    """Set this side up once: keys, a config file, and what to carry to the other side."""
    if role not in ("sender", "receiver"):
        raise UsageError("--role is sender or receiver")
    if server is not None:
        Place(server=server, fingerprint=fingerprint).check("--to")
    elif fingerprint is not None:
        raise UsageError("--tls-fingerprint pins the certificate of the --server it goes with")
    chosen = directory
    # AIRGAP_CONFIG names the file itself, whatever it is called.
    made = directory / "config.toml" if directory else config.default_path()
    directory = made.parent
    if server is not None and made.exists() and not force:  # a drop box for a set-up side
        keys_held = any((directory / "keys").glob("*"))
        section = "send" if role == "sender" else "fetch"
        say(
            f"airgap: to add the drop box{' and keep the keys' if keys_held else ''}, put these "
            f"lines under [{section}] in {made}, in place of any such lines there:"
        )
        say(f"server = {config.toml_string(server)}")
        if fingerprint:
            say(f"tls_fingerprint = {config.toml_string(fingerprint)}")
        raise StorageError(
            f"{directory} is set up already: {made.name}{' and keys' if keys_held else ''}",
            hint=f"add the lines above to {made}, or replace "
            + ("it all with --force (the old keys are lost)" if keys_held else "it with --force"),
        )
    text = config.initial_text(role=role, server=server, fingerprint=fingerprint)
    keys = KeySet.generate()
    files = [replace(f, name=f"keys/{f.name}") for f in keys.files(created=datetime.now(UTC))]
    files += [KeyFile(made.name, text, 0o644)]
    if not (directory / "recipients.txt").exists():  # kept, as trusted/ is: carried by hand
        files += [
            KeyFile("recipients.txt", "# one age1... recipient a line: the receivers'\n", 0o644)
        ]
    keyfiles.write_key_files(directory, files, force=force)
    private_dir(directory / "trusted")
    private_dir(default_state_dir())  # the ledgers': a container mounting it finds it the user's
    say(f"wrote keys and {made.name} to {directory}")
    if chosen is not None and made.absolute() != config.default_path().absolute():
        say(f"airgap reads it with AIRGAP_CONFIG={made.absolute()} set")
    if role == "sender":
        say(f"carry {directory}/keys/signing.pub to each receiver (into its trusted/)")
        say("and to the drop box (airgap serve --trusted-signer), which checks senders;")
        say(f"put each receiver's recipient line into {directory}/recipients.txt")
    else:
        say(f"carry {directory}/keys/recipient.txt to each sender (into its recipients.txt);")
        say(f"put each sender's signing.pub into {directory}/trusted/")
    if server is not None:
        say(
            f"the drop box's password: AIRGAP_PASSWORD, ~/.netrc, or a file (chmod 600) that "
            f"password_file in {made.name} names"
        )
