"""``airgap send``, ``fetch``, ``verify`` and ``ls``: thin commands over the client modules."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from airgap.client import config, keyfiles, sendjob
from airgap.client import fetch as fetching
from airgap.client.cli.app import (
    FingerprintOption,
    FromOption,
    IdentityOption,
    QuietOption,
    ServerOption,
    StateDirOption,
    TrustOption,
    app,
    default_state_dir,
    emit,
    guarded,
    plural,
    secret,
)
from airgap.client.engine import Engine
from airgap.client.ftp import same_server
from airgap.client.ledger import Ledger
from airgap.client.places import Place, open_place, send_spool
from airgap.client.sendledger import audience
from airgap.client.spool import ContinueMismatch, SpooledTransport
from airgap.client.terminal import one_line, printable, say
from airgap.client.transport import Transport
from airgap.client.unfinished import Recipe, began_encoding, claim, key_of, stand_ins
from airgap.shared import age
from airgap.shared.errors import Interrupted, UsageError
from airgap.shared.ids import is_bundle_id
from airgap.shared.manifest import Manifest
from airgap.shared.pipeline import interrupted


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
        int | None,
        typer.Option(
            help="zstd level. Default: 1 to a directory; to a server, from 1 up to 7 as the "
            "link is slower than the encoder.",
            min=1,
            max=19,
        ),
    ] = None,
    to: Annotated[
        Path | None, typer.Option("--to", help="Directory (removable media) to write into.")
    ] = None,
    server: ServerOption = None,
    fingerprint: FingerprintOption = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Finish an interrupted send of bundle ID.")
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Send every layer, whatever the ledger says.")
    ] = False,
    base: Annotated[
        list[str] | None,
        typer.Option(
            "--base", help="Images the far side holds (IMAGE[,IMAGE]): their layers stay here."
        ),
    ] = None,
    skip_space_check: Annotated[
        bool,
        typer.Option(
            "--skip-space-check",
            help="Start even where the uncompressed size does not fit (the payload is "
            "usually smaller); a disk that fills stops the send.",
        ),
    ] = False,
    state_dir: StateDirOption = None,
    quiet: QuietOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Write images (docker save) or files into a signed, encrypted bundle.

    Images go incrementally: layers an earlier bundle already took to the same place (see
    `airgap ledger show`) or that --base images hold are left out."""
    cfg = config.load().send
    place = _place(to, server, fingerprint, cfg)
    place.check("--to")  # a usage error leaves nothing behind, no spool among it
    ledgers = (state_dir or default_state_dir()) / "sent"
    started = time.monotonic()
    stored: Recipe | None = None  # what an interrupted send, resumed by id, was asked to do
    if resume is not None:
        if not is_bundle_id(resume):
            raise UsageError(f"--resume {resume!r} is not a bundle id")
        chosen = {
            "images": images,
            "--file": file,
            "--full": full,
            "--base": base,
            "--level": level,
        }
        if ignored := [name for name, value in chosen.items() if value]:
            raise UsageError(
                f"--resume finishes bundle {resume} as it began: "
                f"{', '.join(ignored)} cannot change it",
                hint="resume it with --server (and recipient options) alone, or send those anew",
            )
        if send_spool(resume).is_dir() and not claim(send_spool(resume)):
            raise UsageError(f"bundle {resume} is being sent by another airgap right now")
        stored = sendjob.unfinished(resume)
        if stored is None or place.server is None:
            raise UsageError(
                f"no unfinished send {resume} to a drop box here",
                hint="airgap send --resume ID --server URL, with the id its error printed",
            )
        if place.describe() != stored.destination:
            raise UsageError(
                f"bundle {resume} was being sent to {stored.destination}",
                hint="resume it with that --server URL",
            )
        if sendjob.encoded(resume):
            if recipient or recipients_file or no_encrypt or passphrase:  # as checked below
                asked = _recipients(recipient or [], recipients_file or [], no_encrypt, passphrase)
                if audience(asked) != stored.audience:
                    raise UsageError(
                        f"bundle {resume} was being encrypted to other recipients",
                        hint="resume it without recipient options, or with the same ones",
                    )
                sendjob.check_passphrase(resume, key_of(send_spool(resume)), asked)
            manifest, transport = sendjob.finish(resume, place, ledgers, quiet=quiet, tell=say)
            _sent(manifest, transport, time.monotonic() - started, as_json)
            return
        images, file = list(stored.images), [Path(p) for p in stored.files]
        full, base, level = stored.full, list(stored.bases), stored.level
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
    key = keyfiles.load_signing_key(
        sign_key, secret("AIRGAP_SIGN_PASSPHRASE", "signing key passphrase")
    )
    if recipient or recipients_file or no_encrypt or passphrase:
        recipients = _recipients(recipient or [], recipients_file or [], no_encrypt, passphrase)
    elif stored is not None:
        recipients = stand_ins(stored.audience)  # the stored key already encrypts to them
    else:
        recipients = _recipients(cfg.recipient, cfg.recipients_file, False, False)
    bases = [name for value in base or [] for name in value.split(",") if name]
    if full and bases:
        raise UsageError("--full and --base exclude each other")
    if not images and (full or bases):
        given = "--full" if full else "--base"
        raise UsageError(f"{given} chooses the layers of images; --file sends files whole")
    recipe = Recipe(
        destination=place.describe(),
        audience=audience(recipients),
        # Neither: the pace chooses, from the link's speed. A resumed send keeps its own.
        level=stored.level if stored is not None else level or cfg.level,
        images=tuple(images or ()),
        files=tuple(str(p.absolute()) for p in file or ()),
        full=full,
        bases=tuple(bases),
    )
    if resume is not None and stored is not None:
        if recipe.audience != stored.audience:
            raise UsageError(
                f"bundle {resume} was being encrypted to other recipients",
                hint="resume it without recipient options, or with the same ones",
            )
        payload_key = key_of(send_spool(resume))
        sendjob.check_passphrase(resume, payload_key, recipients)
        begun = sendjob.Start(resume, payload_key, continuing=True)
    else:
        begun = sendjob.start_current(recipe, recipients, place, tell=say)
    if begun.continuing:
        if began_encoding(send_spool(begun.bundle_id)):
            say(f"continuing the interrupted send of bundle {begun.bundle_id}")
        if sendjob.encoded(begun.bundle_id):
            try:
                manifest, transport = sendjob.finish(
                    begun.bundle_id, place, ledgers, quiet=quiet, tell=say
                )
            except ContinueMismatch as exc:
                if resume is not None:  # its images or files are the stored recipe's: as sent
                    exc.hint = "send them again with the command that began it (a new bundle)"
                    raise
                say(f"airgap: cannot continue bundle {begun.bundle_id}: {exc.message}")
                say("airgap: sending a new bundle instead")
                begun = sendjob.start(recipe, recipients, place)
            else:
                _sent(manifest, transport, time.monotonic() - started, as_json)
                return
    by = sendjob.Sender(
        place, recipients, key, ledgers, quiet=quiet, tell=say, space_check=not skip_space_check
    )
    try:
        manifest, transport = sendjob.run(recipe, begun, by)
    except ContinueMismatch as exc:
        say(f"airgap: cannot continue bundle {begun.bundle_id}: {exc.message}")
        say("airgap: sending a new bundle instead")
        manifest, transport = sendjob.run(recipe, sendjob.start(recipe, recipients, place), by)
    _sent(manifest, transport, time.monotonic() - started, as_json)


def _place(
    directory: Path | None,
    server: str | None,
    fingerprint: str | None,
    configured: config.SendSettings | config.FetchSettings,
) -> Place:
    """Flags first, then AIRGAP_SERVER, then the configured drop box: each only when neither a
    directory nor a server was given before it; AIRGAP_TLS_FINGERPRINT pins a server of a flag
    or of AIRGAP_SERVER (the configured one has its own, which also pins its URL given again
    unpinned). The configured password file goes with the configured server alone, never to
    another."""
    if directory is None and server is None and os.environ.get("AIRGAP_SERVER"):
        server = os.environ["AIRGAP_SERVER"]
    if server is not None:  # a flag's or the variable's (a wrong pin only refuses)
        fingerprint = fingerprint or os.environ.get("AIRGAP_TLS_FINGERPRINT") or None
        if fingerprint is None and same_server(server, configured.server):  # typed again
            fingerprint = configured.tls_fingerprint
    if directory is None and server is None and configured.server:
        server, fingerprint = configured.server, fingerprint or configured.tls_fingerprint
    same = (
        server is not None
        and same_server(server, configured.server)
        and (fingerprint or "").lower() == (configured.tls_fingerprint or "").lower()
    )  # another pin is another server, whatever the URL says
    password_file = configured.password_file if server and same else None
    place = Place(directory, server, fingerprint, password_file)
    if place.server is not None and place.server.lower().startswith("ftp://"):
        say(
            "airgap: warning: ftp:// sends the password in clear; use ftps:// where the "
            "server offers TLS (bundles stay signed, and encrypted unless --no-encrypt)"
        )
    return place


def _same_dir(one: Path, other: Path) -> bool:
    try:
        return one.samefile(other)
    except OSError:
        return False  # one not there (yet): not the other, which is


def _is_dir(path: Path) -> bool:
    """False for what cannot be looked at either (a folder above it closed to us): reading it
    as a key then names the file and the reason."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _trusted(paths: Sequence[Path], *, needed: bool = True) -> list[Path]:
    """Trusted keys; a directory stands for every .pub file in it. An empty one is named when
    ``needed`` (``ls`` lists unverified without keys, as after ``airgap init``)."""
    found: list[Path] = []
    for path in paths:
        if not _is_dir(path):
            found.append(path)
        elif keys := sorted(path.glob("*.pub")):
            found += keys
        elif needed:
            raise UsageError(
                f"no trusted signer key: {path} holds no .pub file",
                hint="put the sender's signing.pub in it, or pass --trust with the file itself",
            )
    return found


def _sent(manifest: Manifest, transport: Transport, seconds: float, as_json: bool) -> None:
    left_out = len(manifest.omitted)
    has = "it" if left_out == 1 else "them"
    say(
        f"sent bundle {manifest.id}: {manifest.payload.size} bytes to {transport.describe()}"
        + (f" ({plural(left_out, 'layer')} left out: the far side has {has})" if left_out else "")
    )
    for image in manifest.images:
        if not image.refs:
            say(f"  image {image.id} was named by id or digest, not by a tag: it arrives untagged")
    if as_json:
        wire = transport.sent if isinstance(transport, SpooledTransport) else None
        emit(
            {
                "id": manifest.id,
                "images": [ref for image in manifest.images for ref in image.refs],
                "untagged": _untagged(manifest),
                "files": [f.name for f in manifest.files],
                "plaintext_bytes": manifest.plaintext_size,
                "payload_bytes": manifest.payload.size,
                "omitted_layers": left_out,
                "bytes_on_wire": wire,
                "seconds": round(seconds, 3),
            }
        )


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
        phrase = secret("AIRGAP_PASSPHRASE", "bundle passphrase", confirm=True)()
        return [age.ScryptRecipient(phrase)]
    return list(keyfiles.load_recipients(values, files))


def _identities(paths: Sequence[Path]) -> list[age.Identity]:
    found: list[age.Identity] = list(keyfiles.load_identities(paths))
    if "AIRGAP_PASSPHRASE" in os.environ:
        found.append(age.ScryptIdentity(secret("AIRGAP_PASSPHRASE", "bundle passphrase")()))
    return found


def _untagged(manifest: Manifest) -> list[str]:
    """The config digests of the images ``manifest`` carries without a tag (sent by id or
    digest): what every engine names them by."""
    return [image.config or image.id for image in manifest.images if not image.refs]


def _report(
    outcomes: Sequence[fetching.Outcome],
    verb: str,
    as_json: bool,
    extra: dict[str, Any] | None = None,
    *,
    loaded: bool = False,  # a fetch: name the untagged images the engine now holds
) -> None:
    for o in outcomes:
        if o.error is None:
            untagged = _untagged(o.manifest) if o.manifest and loaded else []
            shown = "".join(f"\n  {printable(p)}" for p in o.imported)
            shown += "".join(f"\n  {d} (untagged: sent by id or digest)" for d in untagged)
            say(f"{verb} {o.bundle_id}{shown}")
        else:
            imported = "".join(f"\n  {printable(p)}" for p in o.imported)  # kept or not
            say(f"airgap: error: bundle {o.bundle_id}: {one_line(o.error.message)}{imported}")
            if o.error.hint:
                say(f"airgap: hint: {one_line(o.error.hint)}")
    if not outcomes:
        say("nothing to do: no new published bundles")
    if as_json:
        emit(
            {
                "bundles": [
                    {
                        "id": o.bundle_id,
                        "ok": o.error is None,
                        "error": None if o.error is None else o.error.message,
                        "imported": list(o.imported),
                        "untagged": _untagged(o.manifest) if o.manifest and loaded else [],
                        "payload_bytes": o.manifest.payload.size if o.manifest else None,
                    }
                    for o in outcomes
                ],
                **(extra or {}),
            }
        )
    codes = [o.error.exit_code for o in outcomes if o.error is not None]
    if codes:
        raise typer.Exit(int(codes[0]))


_FETCH_AGAIN = (
    "run the same command again: what was downloaded stays in the spool, and nothing checked "
    "is downloaded again"
)


@app.command()
@guarded
def fetch(
    ids: Annotated[
        list[str] | None,
        typer.Argument(
            help="Bundle ids, or images by tag or config digest (default: every new bundle)."
        ),
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", help="Where files bundles are unpacked.")
    ] = None,
    identity: IdentityOption = None,
    trust: TrustOption = None,
    state_dir: StateDirOption = None,
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
    ledger = Ledger((state_dir or default_state_dir()) / "imported.jsonl")
    engine = functools.cache(Engine.from_env)
    output_dir = output_dir or cfg.output_dir
    identity = identity or list(cfg.identity)
    place = _place(source, server, fingerprint, cfg)
    if keep is not None and place.directory is not None and _same_dir(keep, place.directory):
        # Its copies are the very files a --consume deletes, and a copy onto itself is none.
        raise UsageError(
            f"--keep {keep} is the folder fetched from", hint="keep the copies in another folder"
        )
    transport = open_place(place, "--from")
    started = time.monotonic()
    try:
        outcomes = fetching.fetch_bundles(
            transport,
            fetching.Destination(
                output_dir,
                engine,
                consume=consume,
                keep=keep,
                quiet=quiet,
            ),
            identities=_identities(identity or []),
            trusted=trusted,
            ledger=ledger,
            only=ids or [],
        )
    except KeyboardInterrupt as exc:
        raise Interrupted("interrupted", hint=_FETCH_AGAIN) from exc
    except Exception as exc:
        if interrupted():  # a Ctrl-C met as another error (a generator the engine was reading)
            raise Interrupted("interrupted", hint=_FETCH_AGAIN) from exc
        raise
    finally:
        transport.close()
    wire = transport.received if isinstance(transport, SpooledTransport) else None
    summary = {"bytes_on_wire": wire, "seconds": round(time.monotonic() - started, 3)}
    _report(outcomes, "fetched", as_json, summary, loaded=True)


@app.command()
@guarded
def verify(
    ids: Annotated[
        list[str] | None,
        typer.Argument(help="Bundle ids, or images by tag or config digest (default: all)."),
    ] = None,
    identity: IdentityOption = None,
    trust: TrustOption = None,
    source: FromOption = None,
    server: ServerOption = None,
    fingerprint: FingerprintOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Check bundles without importing them: signatures, sizes and every segment hash.

    With --identity (not the configured one: a bundle for another receiver is intact all the
    same) or AIRGAP_PASSPHRASE, decrypt and check the plaintext too."""
    cfg = config.load().fetch
    trusted = keyfiles.load_trusted(_trusted(trust or cfg.trust))
    identities = _identities(identity or [])
    place = _place(source, server, fingerprint, cfg)
    transport = open_place(place, "--from")
    try:
        outcomes = fetching.verify_bundles(
            transport,
            identities=identities,
            trusted=trusted,
            only=ids or [],
            quiet=quiet,
        )
    finally:
        transport.close()
    if not identities and any(
        o.manifest and o.manifest.encryption.scheme != "none" for o in outcomes
    ):
        say(
            "airgap: checked without decrypting (signatures, sizes, segment hashes); "
            "--identity or AIRGAP_PASSPHRASE checks the plaintext too"
        )
    _report(outcomes, "verified", as_json)


@app.command(name="ls")
@guarded
def list_command(
    trust: TrustOption = None,
    source: FromOption = None,
    server: ServerOption = None,
    fingerprint: FingerprintOption = None,
    state_dir: StateDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """List published bundles: size, content, signer and state (checked with --trust)."""
    cfg = config.load().fetch
    trust_files = _trusted(trust or cfg.trust, needed=False)
    trusted = keyfiles.load_trusted(trust_files) if trust_files else []
    imported = Ledger((state_dir or default_state_dir()) / "imported.jsonl").ids()
    place = _place(source, server, fingerprint, cfg)
    transport = open_place(place, "--from")
    try:
        listing = fetching.list_bundles(transport, trusted=trusted, imported=imported)
    finally:
        transport.close()
    rows = [_row(item) for item in listing]
    if as_json:
        emit({"bundles": rows})
        return
    for row in rows:
        thin = f" (+{plural(row['omitted_layers'], 'layer')} of earlier bundles)"
        print(
            f"{row['id']}  {row['state']:<10}  {row['payload_bytes'] or '-':>12}  "
            f"{row['signer'] or '-':<16}  "
            + printable(" ".join(row["content"]) or row["detail"])
            + (f" ({printable(row['detail'])})" if row["content"] and row["detail"] else "")
            + (thin if row["omitted_layers"] else "")
        )
    if not rows:
        say("no published bundles")


def _row(item: fetching.Listing) -> dict[str, Any]:
    manifest = item.manifest
    content: list[str] = []
    if manifest is not None:
        content = [r for i in manifest.images for r in i.refs]
        content += [f"{i.config or i.id} (untagged)" for i in manifest.images if not i.refs]
        content = content or [f.name for f in manifest.files]
    return {
        "id": item.bundle_id,
        "state": item.state,
        "payload_bytes": manifest.payload.size if manifest else None,
        "signer": manifest.signer if manifest else None,
        "content": content,
        "untagged": _untagged(manifest) if manifest else [],
        "omitted_layers": len(manifest.omitted) if manifest else None,
        "detail": item.detail,
    }
