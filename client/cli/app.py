"""The ``airgap`` command line's shared parts: the app, its options, output and error mapping.

The CLI package is the only code that knows about argv, the terminal and exit codes. Secrets
never come from argv: passphrases come from the environment (``AIRGAP_PASSPHRASE``,
``AIRGAP_SIGN_PASSPHRASE``) or a prompt on the terminal. Payload and machine output
(``--json``) go to stdout, everything for humans to stderr.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import getpass
import inspect
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn, ParamSpec

import typer

from airgap.client.ftp import cut_transfers
from airgap.client.memory import keep_freed_pieces
from airgap.client.terminal import one_line, say
from airgap.client.undumpable import keep_out_of_dumps
from airgap.shared.errors import AirgapError, ExitCode, Interrupted, StorageError, UsageError
from airgap.shared.pipeline import interrupted, interrupting
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


def reflow_help(commands: typer.Typer) -> None:
    """Make each paragraph of every command's help one line, as typer makes the first: it
    keeps the line breaks of the others, which the terminal then wraps again mid-sentence."""
    for info in commands.registered_commands:
        doc = info.help or (info.callback.__doc__ if info.callback else None)
        if doc:
            paragraphs = inspect.cleandoc(doc).split("\n\n")
            info.help = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    for group in commands.registered_groups:
        if group.typer_instance is not None:
            reflow_help(group.typer_instance)


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


def secret(env: str, prompt: str, *, confirm: bool = False) -> Callable[[], bytes]:
    """A deferred secret: from the environment, else the terminal; never from argv."""

    def ask() -> bytes:
        value = os.environ.get(env)
        if value is None:
            if not sys.stdin.isatty():
                raise UsageError(f"{prompt} needed", hint=f"set {env} or run on a terminal")
            try:
                value = getpass.getpass(f"{prompt}: ")
                if confirm and getpass.getpass(f"{prompt} (again): ") != value:
                    raise UsageError("the two passphrases differ")
            except EOFError as exc:  # Ctrl-D
                raise UsageError(f"{prompt} needed: none typed") from exc
        if not value:
            raise UsageError(f"{prompt} is empty")
        return value.encode()

    return ask


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "airgap"


def emit(summary: dict[str, Any]) -> None:
    json.dump(summary, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


StateDirOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="AIRGAP_STATE_DIR",
        file_okay=False,  # a file there is named as such, not "File exists" from a ledger
        help="Where the ledgers live.",
    ),
]
# AIRGAP_SERVER and AIRGAP_TLS_FINGERPRINT are read where no flag names a place (see
# transfer._place), not as these options' defaults: --to or --from must win over them.
ServerOption = Annotated[
    str | None,
    typer.Option("--server", help="Drop box: ftp:// or ftps://USER@HOST:PORT/."),
]
FingerprintOption = Annotated[
    str | None,
    typer.Option(
        "--tls-fingerprint",
        help="sha256:... of the appliance's certificate (ftps://).",
    ),
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar (none either off a terminal).")
]
TrustOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--trust",
        envvar="AIRGAP_TRUST",
        help="A trusted sender's signing.pub, or a folder of them.",
    ),
]
IdentityOption = Annotated[
    list[Path] | None,
    typer.Option("--identity", "-i", envvar="AIRGAP_IDENTITY", help="age identity file."),
]
FromOption = Annotated[
    Path | None, typer.Option("--from", help="Directory holding bundles (removable media).")
]


#: What writing to stdout meets when it goes to a full disk or a reader that has gone.
_OUTPUT_LOST = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EPIPE}


def _drop_output() -> None:
    """What stdout still buffers goes nowhere: flushed at exit, it would fail again."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _fail(exc: AirgapError) -> NoReturn:
    say(f"airgap: error: {one_line(exc.message)}")
    if exc.hint:
        say(f"airgap: hint: {one_line(exc.hint)}")
    sys.exit(int(exc.exit_code))


def _no_empty_arguments(args: list[str]) -> None:
    """An empty argument is refused rather than read as a path: ``Path("")`` is the current
    folder, so ``--to "$MEDIA"`` with MEDIA unset wrote the bundle where the command ran (found
    in review). No option or argument of airgap means anything when empty."""
    for before, arg in zip(["airgap", *args], args, strict=False):
        if arg == "" or (arg.startswith("--") and arg.find("=") == len(arg) - 1):
            named = arg.removesuffix("=") or before
            option = named.startswith("-") and named != "--"
            raise UsageError(
                f"an empty value for {named}" if option else f"an empty argument after {named}",
                hint="an unset shell variable? (nothing empty is read as the current folder: "
                "give . for that)",
            )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    interrupting()  # threads blocked on a slow network are not waited for
    cut_transfers()  # and no thread stays blocked on one
    raise KeyboardInterrupt


def main() -> NoReturn:
    """Entry point: the one place where errors become messages and exit codes."""
    try:
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)  # docker stop, a service manager, kill
        keep_out_of_dumps()
        keep_freed_pieces()
        _no_empty_arguments(sys.argv[1:])
        app()  # standalone: typer itself answers --help and bad usage (exit 2)
        sys.stdout.flush()  # here, where a full disk or a closed pipe can still be said
    except AirgapError as exc:
        if interrupted() and not isinstance(exc, Interrupted):  # a transfer Ctrl-C cut
            exc = Interrupted("interrupted", hint=exc.hint)
        _fail(exc)
    except KeyboardInterrupt:
        _fail(Interrupted("interrupted"))
    except Exception as exc:
        # A bug of ours. No traceback by default: its locals and messages may hold secrets.
        if os.environ.get("AIRGAP_DEBUG") == "1":
            raise
        if interrupted():  # a thread the interrupt cut short failed on its way out
            _fail(Interrupted("interrupted"))
        if isinstance(exc, OSError) and exc.errno in _OUTPUT_LOST:
            _drop_output()
            _fail(StorageError(f"writing the output: {exc.strerror or exc}"))
        _fail(
            AirgapError(
                f"internal error ({type(exc).__name__}); this is a bug in airgap",
                hint="run again with AIRGAP_DEBUG=1 to see the traceback, and report it",
            )
        )
    sys.exit(int(ExitCode.OK))
