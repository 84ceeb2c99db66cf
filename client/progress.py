"""Progress bars on stderr (tqdm): bytes, rate and ETA, only where a person is watching.

Off when stderr is not a terminal or with --quiet. A bar wraps an iterator of chunks and
counts them as they pass; it changes nothing about the bytes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

from tqdm import tqdm


def counted(
    chunks: Iterable[bytes], *, what: str, total: int | None, quiet: bool
) -> Iterator[bytes]:
    if quiet or not sys.stderr.isatty():
        yield from chunks
        return
    with tqdm(
        total=total,
        desc=what,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    ) as bar:
        for chunk in chunks:
            bar.update(len(chunk))
            yield chunk
