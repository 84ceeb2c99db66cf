"""``airgap serve``: prepare the root on first start, then run the drop box until a signal.

On first start it creates the layout, a self-signed certificate and one ``sender`` and one
``receiver`` account with random passwords, written to ``state/credentials.txt`` (0600, until
``airgap user`` changes them) and printed once on stderr. It then prints ``airgap: serving
ftp://HOST:PORT/ root=...`` with the real bound port (``--listen HOST:0`` picks one), and
serves until SIGTERM or SIGINT; partial uploads stay on disk, resumable (until unwritten for
``--partial-expiry`` seconds, see :mod:`airgap.server.sweep`). Bundles left in
incoming areas are checked again at start. Passwords are printed only on the first start and
never logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import resource
import shlex
import signal
import stat
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from airgap.server import credentials, ftp, sweep
from airgap.server.accounts import Accounts
from airgap.server.audit import AuditLog
from airgap.server.config import GUARDED, AnonymousMode, ServeConfig, TlsMode, TlsReuse
from airgap.server.ftp.reuse import checkable as reuse_checkable
from airgap.server.hashing import HashCache
from airgap.server.layout import Layout, resolved
from airgap.server.limits import BusyFiles, LoginGuard, Sessions
from airgap.server.login import make_area
from airgap.server.publish import Publisher
from airgap.server.storage import free_bytes
from airgap.server.tlscert import ensure_certificate, fingerprints
from airgap.server.users import Role, UserDB, generate_password
from airgap.shared import minisign
from airgap.shared.errors import AirgapError, KeyFileError, ServerError
from airgap.shared.owners import written_by_others

logger = logging.getLogger("airgap.server")
FIRST_USERS = (("sender", Role.SENDER), ("receiver", Role.RECEIVER))


def prepare(config: ServeConfig, say: Callable[[str], None]) -> Layout:
    """Create what is missing under the root; print what a new operator must know, once."""
    layout = resolved(config.root)
    layout.create()
    # Before anything else is made: a second serve started at the same time on a new root
    # took the first one's new users.json for a lost one (found in review).
    _hold(layout)  # the descriptor stays open, and the lock held, as long as the process
    addresses = [config.host] + ([config.masquerade_address] if config.masquerade_address else [])
    ensure_certificate(layout.tls_cert, layout.tls_key, addresses=addresses)
    if not layout.users_file.exists():
        if layout.credentials_file.exists():  # new passwords beside the old: none would work
            raise ServerError(
                f"{layout.users_file} is gone, but {layout.credentials_file} still lists "
                "first-start passwords",
                hint="restore users.json, or remove credentials.txt too for new first accounts",
            )
        _first_users(layout, say)
    _check_secrets(layout)
    for user in UserDB(layout.users_file).load().values():
        if user.role is Role.SENDER:  # now, before anonymous uploads could take the name
            try:
                make_area(layout, user.name)
            except (ServerError, OSError) as exc:
                say(f"airgap: warning: {exc}; sender {user.name} cannot log in")
    return layout


def _check_secrets(layout: Layout) -> None:
    """A file that holds a secret is the server's alone (or root's), as sshd wants its host
    keys: one others may read gives away the TLS key or the password hashes, one they may
    write the accounts themselves. So are the folders above it, which serve makes 0700 but
    whose owner could put another users.json in place, read again as it changes (review).
    Found in review: serve started on any modes and owners."""
    me = os.geteuid()
    for folder in (layout.root, layout.state, layout.tls_key.parent):
        owner = folder.stat().st_uid
        if owner not in (me, 0):
            raise ServerError(
                f"{folder} holds the appliance's accounts and keys, and it belongs to another "
                f"user (uid {owner}), who could replace them",
                hint=f"chown -R {me} {shlex.quote(str(layout.root))}, the user airgap serve "
                "runs as",
            )
    for path, holds in (
        (layout.users_file, "the accounts and their password hashes"),
        (layout.credentials_file, "first-start passwords"),
        (layout.tls_key, "the TLS private key"),
    ):
        try:
            info = path.stat()
        except FileNotFoundError:
            continue  # credentials.txt goes once every first password was changed
        except OSError as exc:
            raise ServerError(f"cannot read {path}: {exc.strerror or exc}") from exc
        mode = stat.S_IMODE(info.st_mode)
        fix = f"chmod 600 {shlex.quote(str(path))}"
        if info.st_uid not in (me, 0):
            why = f"it belongs to another user (uid {info.st_uid})"
            fix = f"chown {me} {shlex.quote(str(path))}; {fix}"
        elif mode & 0o077:
            why = f"others may read or write it (mode {mode:04o})"
        elif not stat.S_ISREG(info.st_mode):
            why = "it is not a regular file"
            fix = f"put the file itself at {path}"
        else:
            continue
        raise ServerError(
            f"{path} holds {holds}, and {why}", hint=f"make it the server user's alone: {fix}"
        )


def _first_users(layout: Layout, say: Callable[[str], None]) -> None:
    first = [(name, role, generate_password()) for name, role in FIRST_USERS]
    lines = [f"{name} {role.value} {password}" for name, role, password in first]
    credentials.create(layout.credentials_file, lines)  # first: no account nobody knows of
    users = UserDB(layout.users_file)
    for name, role, password in first:
        users.add(name, role, password)
    if not sys.stderr.isatty():  # a log (docker logs, a journal) would keep them for good
        names = " and ".join(name for name, _, _ in first)
        say(
            f"airgap: created accounts {names}; their passwords are in "
            f"{layout.credentials_file} (mode 0600), not in this output, which a log may keep"
        )
        return
    say(f"airgap: created accounts (also in {layout.credentials_file}, mode 0600):")
    for line in lines:
        say(f"airgap:   {line}")


def load_trusted(paths: tuple[Path, ...]) -> list[minisign.PublicKey]:
    keys = []
    for path in paths:
        # Others could have put a signer of theirs there; a container's may be mounted
        # read-only from its host.
        if why := written_by_others(path, mounted=True):
            raise KeyFileError(
                f"trusted signer {path} decides which bundles are published, and {why}",
                hint=GUARDED,
            )
        try:
            keys.append(minisign.PublicKey.parse(path.read_text(encoding="utf-8")))
        except OSError as exc:
            raise KeyFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
        except (AirgapError, UnicodeDecodeError) as exc:
            raise KeyFileError(
                f"trusted signer {path} is not a minisign public key ({exc})",
                hint="give a sender's signing.pub (signing.key is its secret, which stays there)",
            ) from None
    return keys


def _hold(layout: Layout) -> int:
    """One appliance per root: two would publish, sweep and count quotas over each other."""
    path = layout.state / "serve.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ServerError(
            f"another airgap serve is running on {layout.root}",
            hint="stop it first, or give this one another --root",
        ) from None
    return fd


#: Descriptors a session may hold at once: its control and data connections, a passive
#: listener and the file it transfers; and what the server holds besides (threads' files,
#: audit log, uploads waiting for their hash).
PER_SESSION, BESIDES = 4, 256


def _more_descriptors(max_connections: int, say: Callable[[str], None]) -> None:
    """Raise the soft limit of open files to the hard one: the usual soft limit (1024) is
    what 256 sessions can need. Warn when even the hard one is short of that."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    needed = PER_SESSION * max_connections + BESIDES
    if soft != resource.RLIM_INFINITY and soft < needed:
        say(
            f"airgap: warning: {soft} open files at most (ulimit -n), where "
            f"{max_connections} connections may need {needed}: raise the limit, or lower "
            "--max-connections"
        )


def _submit(pool: ThreadPoolExecutor, work: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the server stopped meanwhile
        pool.submit(work)


def serve(config: ServeConfig, say: Callable[[str], None]) -> None:
    _logging()
    # What can fail on its own comes first: a typo in a signer's path or a port in use must
    # not leave a new root behind, with accounts whose passwords are live (walkthrough).
    trusted = load_trusted(config.trusted_signers)
    try:
        listening = ftp.listening_socket(config.host, config.port)
    except OSError as exc:
        raise ServerError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}",
            hint="another process may listen there (ss -ltnp shows which); choose another --listen",
        ) from exc
    layout = prepare(config, say)
    _more_descriptors(config.max_connections, say)
    if (free := free_bytes(layout.root)) < config.min_free_bytes:
        say(
            f"airgap: warning: {layout.root} has {free >> 20} MiB free, under --min-free-bytes "
            f"({config.min_free_bytes >> 20} MiB): every upload is refused (552) until there is "
            "more"
        )
    if config.anonymous is AnonymousMode.READ_WRITE:
        say("airgap: WARNING: --anonymous read-write: ANYONE can upload, list and download")
        say("airgap: WARNING: in pub/incoming without a password. For the book's walk-through")
        say("airgap: WARNING: only; never on a network you do not fully control.")
    if config.tls is TlsMode.OFF:
        say("airgap: warning: --tls off: passwords and data cross the network in clear")
    elif config.tls_reuse is TlsReuse.REQUIRED and not reuse_checkable():
        say(
            "airgap: warning: this pyOpenSSL cannot tell a resumed TLS session: TLS data "
            "connections are not bound to their control connection (--tls-reuse not enforced)"
        )
    if trusted:
        say(f"airgap: publishing bundles signed by {', '.join(k.key_id_hex for k in trusted)}")
    else:
        say("airgap: warning: no --trusted-signer: bundles signed by any key are published")
    ioloop = ftp.new_ioloop()
    audit = AuditLog(layout.audit_file)
    busy = BusyFiles()
    hashes = HashCache()  # shared: an upload hashed as it landed is a hit for HASH and publish
    pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="airgap-worker")
    logins = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="airgap-login")
    users = UserDB(layout.users_file)
    services = ftp.Services(
        config=config,
        layout=layout,
        users=users,
        accounts=Accounts(users),
        guard=LoginGuard(max_failures=config.max_login_failures, ban_seconds=config.ban_seconds),
        sessions=Sessions(config.max_sessions_per_account),
        busy=busy,
        publisher=Publisher(layout, trusted=trusted, busy=busy, audit=audit, hashes=hashes),
        hashes=hashes,
        audit=audit,
        pool=pool,
        logins=logins,
        mailbox=ftp.Mailbox(ioloop),
    )
    server = ftp.make_server(services, ioloop, listening)
    host, port = server.socket.getsockname()[:2]
    prints = fingerprints(layout.tls_cert)
    if config.tls is not TlsMode.OFF:
        say(f"airgap: tls {config.tls.value}; certificate {prints.certificate}")
        say(f"airgap: public key pin (curl --pinnedpubkey) {prints.public_key}")
    scanned = pool.submit(services.publisher.scan)
    upkeep = partial(
        sweep.upkeep,
        layout,
        busy=busy,
        audit=audit,
        older_than=config.partial_expiry,
        publisher=services.publisher,
    )
    # Only once bundles left whole across a restart are published: files with old times
    # (a restored root, a clock that jumped) would look abandoned to the sweep.
    scanned.add_done_callback(lambda _: _submit(pool, upkeep))
    ioloop.call_every(sweep.interval(config.partial_expiry), pool.submit, upkeep)
    audit.record(
        "start", host=host, port=port, tls=config.tls.value, anonymous=config.anonymous.value
    )

    def ready() -> None:  # once a stop is handled as one: a SIGTERM right after this exits 0
        say(f"airgap: serving ftp://{_url_host(host)}:{port}/ root={layout.root}")
        # pyftpdlib's first poll waits for a socket event, its timers unseen until one comes:
        # a word through the mailbox is that event, and after it every poll waits for the next.
        services.mailbox.post(lambda: None)

    _run(server, ioloop, ready)
    # Queued work finishes: the audit records (bytes, sha256) of uploads cut by the stop.
    logins.shutdown(wait=False, cancel_futures=True)
    pool.shutdown(wait=True, cancel_futures=False)
    audit.record("stop")
    audit.close()
    say("airgap: stopped")


#: How often the loop looks for a stop asked by a signal (see :func:`_run`).
STOP_CHECK = 0.5


def _run(server: ftp.Listener, ioloop: Any, ready: Callable[[], None]) -> None:
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        # SIGTERM and Ctrl-C alike. Only noted: a KeyboardInterrupt raised here lands wherever
        # the loop happens to be, and one that lands in a finalizer or a weakref callback is
        # printed and lost (seen here: the server then never stopped). The loop raises it at a
        # point of its own.
        nonlocal stopping
        stopping = True

    def stop_if_asked() -> None:
        if stopping:
            raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    ioloop.call_every(STOP_CHECK, stop_if_asked)
    try:
        ready()
        # No fixed poll timeout: pyftpdlib then waits only until its next scheduled call (a
        # throttle's resume, a login's delay) instead of up to a second past it.
        server.serve_forever(timeout=None, blocking=True, handle_exit=True)
    except KeyboardInterrupt:
        pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        # Closing every channel closes open upload files: partials stay on disk, resumable.
        server.close_all()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("airgap: %(levelname)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    # pyftpdlib logs every command at INFO/DEBUG; its PASS lines are masked, but keep it terse.
    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
