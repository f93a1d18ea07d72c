"""Progress of long CLI runs: a tqdm bar on a terminal, plain lines anywhere else.

A bar redraws itself with carriage returns, which a log file or a CI console shows as one
garbled line; there each step is one plain line on stderr instead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sized
from typing import TextIO, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, file: TextIO | None = None) -> Iterator[T]:
    stream = file if file is not None else sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, file=stream)
        return
    total = len(items) if isinstance(items, Sized) else None
    for i, item in enumerate(items, 1):
        yield item
        print(f"{desc}: {i}/{total if total is not None else '?'}", file=stream, flush=True)
