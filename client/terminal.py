"""What reaches the user's terminal: only printable text, whatever servers and bundles say."""

from __future__ import annotations

import sys
from collections.abc import Callable


def _print(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


#: How lines reach stderr: once progress bars are drawn, above them (see progress.Meter).
write: Callable[[str], None] = _print


def say(message: str) -> None:
    """Lines for the user on stderr. Errors quote servers and bundles, so nothing but
    printable characters and line breaks reaches the terminal (no escape sequences)."""
    write("\n".join(printable(line) for line in message.split("\n")))


def printable(text: str) -> str:
    """Text from a bundle, safe for a terminal: no escape sequences reach it."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def one_line(text: str) -> str:
    """``text`` on one line, whatever a path or a name in it holds: a line break there would
    start a line of its own, and a file name could print a hint airgap never gave."""
    return text.replace("\r", "\\r").replace("\n", "\\n")
