"""``airgap ledger show|forget``: what the sender believes each destination holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from airgap.client.cli.app import (
    ServerOption,
    StateDirOption,
    app,
    default_state_dir,
    emit,
    guarded,
    plural,
)
from airgap.client.places import Place
from airgap.client.sendledger import Summary, summaries
from airgap.client.terminal import one_line, printable, say
from airgap.shared.errors import StorageError, UsageError

ledger_app = typer.Typer(
    help="What each destination already holds: sends leave those layers out.",
    no_args_is_help=True,
)
app.add_typer(ledger_app, name="ledger")

ToOption = Annotated[
    Path | None, typer.Option("--to", help="Directory (removable media) the sends went to.")
]


def _chosen(
    state_dir: Path | None, to: Path | None, server: str | None
) -> tuple[list[Summary], int]:
    """The ledgers of the destination named (every one if none is), and how many could not
    be read: each is told, as it may be another destination's (which need not wait for it)."""
    skipped: list[StorageError] = []
    found = summaries((state_dir or default_state_dir()) / "sent", skipped)
    for exc in skipped:
        say(f"airgap: warning: {one_line(exc.message)}; {one_line(exc.hint or '')}")
    if to is not None or server is not None:
        where = Place(to, server).describe()
        found = [s for s in found if s.destination == where]
    return found, len(skipped)


@ledger_app.command()
@guarded
def show(
    to: ToOption = None,
    server: ServerOption = None,
    state_dir: StateDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """List each destination with its bundles and the layers it holds."""
    chosen, skipped = _chosen(state_dir, to, server)
    if as_json:
        emit({"ledgers": [_obj(s) for s in chosen]})
        return
    for s in chosen:
        print(f"{printable(s.destination)}  to {', '.join(_short(a) for a in s.audience)}")
        counts = f"{plural(len(s.bundles), 'bundle')}, {plural(len(s.layers), 'layer')}"
        print(f"  {counts}, updated {s.updated}")
        for bundle_id in s.bundles:
            carried = sum(1 for b in s.layers.values() if b == bundle_id)
            print(f"  {bundle_id}  carried {plural(carried, 'layer')}")
    if not chosen and not skipped:
        say("no ledger: the next send of images is full")


@ledger_app.command()
@guarded
def forget(
    to: ToOption = None,
    server: ServerOption = None,
    every: Annotated[bool, typer.Option("--all", help="Forget every destination.")] = False,
    state_dir: StateDirOption = None,
) -> None:
    """Forget what a destination holds: the next send to it is full."""
    if every == (to is not None or server is not None):
        raise UsageError("name a destination with --to DIR or --server URL, or pass --all")
    if every:  # by path, without reading them: an unreadable ledger goes too
        gone = list(((state_dir or default_state_dir()) / "sent").glob("*.json"))
        for path in gone:
            path.unlink(missing_ok=True)
        say(f"forgot {plural(len(gone), 'ledger')}" if gone else "nothing to forget")
        return
    chosen, skipped = _chosen(state_dir, to, server)
    for s in chosen:
        s.path.unlink(missing_ok=True)
        say(f"forgot {printable(s.destination)} ({plural(len(s.bundles), 'bundle')})")
    if not chosen and skipped:  # it may be one of those
        raise StorageError(
            "no readable ledger of that destination",
            hint="remove the unreadable ledger named above if it is that destination's, or "
            "airgap ledger forget --all",
        )
    if not chosen:
        say("nothing to forget")


def _obj(s: Summary) -> dict[str, object]:
    return {
        "destination": s.destination,
        "audience": list(s.audience),
        "bundles": list(s.bundles),
        "layers": dict(s.layers),
        "updated": s.updated,
    }


def _short(name: str) -> str:
    return name[:12] + "…" + name[-6:] if len(name) > 24 else name
