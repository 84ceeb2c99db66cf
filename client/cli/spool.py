"""``airgap spool show|drop``: unfinished sends and partial downloads kept for a rerun."""

from __future__ import annotations

from typing import Annotated

import typer

from airgap.client.cli.app import app, emit, guarded, plural
from airgap.client.spool import cache_dir
from airgap.client.spools import Held, drop, held
from airgap.client.terminal import printable, say
from airgap.shared.errors import AirgapError, StorageError, UsageError

spool_app = typer.Typer(
    help="Unfinished sends and partial downloads that a rerun continues.",
    no_args_is_help=True,
)
app.add_typer(spool_app, name="spool")


@spool_app.command()
@guarded
def show(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """List unfinished sends (size, content, destination) and partial downloads (size)."""
    found = held(cache_dir())
    if as_json:
        emit({"spool": str(cache_dir()), "held": [_obj(h) for h in found]})
        return
    for h in found:
        print(f"{h.bundle_id}  {_line(h)}")
    total = sum(h.size for h in found)
    say(f"{plural(len(found), 'item')}, {_mib(total)} in {cache_dir()}")


@spool_app.command("drop")
@guarded
def drop_(
    bundle_ids: Annotated[list[str] | None, typer.Argument(help="Bundle ids to drop.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Drop everything the spool holds.")] = False,
) -> None:
    """Give up unfinished sends or downloads: their spooled bytes (and a send's key) go."""
    if every == bool(bundle_ids):
        raise UsageError("name bundle ids to drop, or pass --all")
    chosen = sorted({h.bundle_id for h in held(cache_dir())}) if every else bundle_ids or []
    refused: list[AirgapError] = []
    for bundle_id in chosen:
        try:
            dropped = drop(cache_dir(), bundle_id)
        except StorageError as exc:  # one being sent: the others still go
            say(f"airgap: {exc.message}")
            refused.append(exc)
            continue
        for h in dropped:
            say(f"dropped {h.bundle_id}: {_line(h)}")
            if h.kind == "send":
                say(f"  the drop box may still hold its partial upload ({h.bundle_id}.*)")
    if not chosen:
        say("nothing to drop")
    if refused:
        raise StorageError(
            f"{plural(len(refused), 'bundle')} not dropped: being sent right now",
            hint=refused[0].hint,
        )


def _line(h: Held) -> str:
    when = h.when.strftime("%Y-%m-%d %H:%M UTC")
    if h.kind == "download":
        return f"download  {_mib(h.size)}, last written {when}"
    content = ", ".join(printable(c) for c in h.content) or "?"
    state = " (sending now)" if h.busy else ""
    return f"send  {_mib(h.size)}, since {when}: {content} to {printable(h.destination)}{state}"


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _obj(h: Held) -> dict[str, object]:
    return {
        "id": h.bundle_id,
        "kind": h.kind,
        "bytes": h.size,
        "when": h.when.isoformat(),
        "content": list(h.content),
        "destination": h.destination,
        "busy": h.busy,
    }
