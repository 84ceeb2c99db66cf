"""What reaches the user's terminal: only printable text, whatever servers and bundles say."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    """Lines for the user on stderr. Errors quote servers and bundles, so nothing but
    printable characters and line breaks reaches the terminal (no escape sequences)."""
    print("\n".join(printable(line) for line in message.split("\n")), file=sys.stderr, flush=True)


def printable(text: str) -> str:
    """Text from a bundle, safe for a terminal: no escape sequences reach it."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)
