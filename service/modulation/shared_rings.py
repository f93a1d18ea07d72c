"""The replay memory's rings in one file, shared by the worker processes of one host.

With ``--workers N`` every worker has its own engine and its own ``ReplayMemory``; if each kept
its rings in its own process, an attacker who spreads augmented copies of an input over
connections that land on different workers would get N independent noise draws instead of one.
``SharedRings`` puts the rings of every (tier, bucket) in one memory-mapped file instead:

* the parent creates it (``SharedRings.create``) before it starts the workers, each worker opens
  it (``SharedRings.open``) and hands it to its memory (``ReplayMemory(shared=...)``);
* the file is a header and four arrays, each starting on a page boundary::

      header  4096 B   magic, version, buckets, capacity, dim, the tier names (JSON)
      meta    slots × (size int64, head int64, unordered int64, newest float64)
      emb     slots × capacity × dim float32   unit embeddings, zero-padded to ``dim``
      cell    slots × capacity int64           the cell each entry was served
      stamp   slots × capacity float64         when it was stored (the memory's clock)

  with slot = tier index × buckets + bucket. It is created sparse (truncated to its size, never
  written with zeros): pages are only allocated as entries are stored, so a full-size file
  (3 tiers × 64 buckets × 4,096 entries, about 400 MB) costs little until it fills. Put it
  where it fits once full: a small /dev/shm (Docker's default is 64 MB) fails with SIGBUS;
* every read-search-store of the memory runs under ``lock``: a threading lock of this object,
  then ``flock`` on the file. flock is held per open file description, which the threads of a
  process using one descriptor share, so it excludes other processes (and other ``open`` calls
  of this process) but not those threads: the threading lock does. Each process therefore opens
  the file itself (spawned workers do; a forked child would share its parent's descriptor, so
  using an inherited object raises);
* entries are stamped with the memory's clock, so all processes have to read one host-wide
  clock: ``time.monotonic`` is (CLOCK_MONOTONIC on Linux).

What is shared is the memory itself; counters (``ReplayMemory.stats``) stay per process. Tiers
missing from the file are not remembered (see ``ReplayMemory``). ``create`` replaces the file
with a fresh one, so a restart of the server starts with an empty memory, as before; workers of
an older server that still map the old file keep their copy and do not see the new one.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import struct
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import torch

from .errors import ModulationArgumentError

_MAGIC = b"AIMRING\x00"
_VERSION = 1
_HEADER = struct.Struct("<8sIIII")  # magic, version, buckets, capacity, dim; then tiers JSON
_PAGE = 4096
META_FIELDS = 4  # int64/float64 fields per slot: size, head, unordered, newest

_Header = tuple[tuple[str, ...], int, int, int]  # tiers, buckets, capacity, dim


def _align(n: int) -> int:
    return -(-n // _PAGE) * _PAGE


class _Layout:
    """Offsets and sizes of the file's arrays for given settings."""

    def __init__(self, tiers: int, buckets: int, capacity: int, dim: int) -> None:
        self.slots = tiers * buckets
        entries = self.slots * capacity
        self.meta = _PAGE
        self.emb = self.meta + _align(self.slots * META_FIELDS * 8)
        self.cell = self.emb + _align(entries * dim * 4)
        self.stamp = self.cell + _align(entries * 8)
        self.total = self.stamp + _align(entries * 8)


class _HostLock:
    """Held by one thread of one process on the host at a time; see the module doc."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pid = os.getpid()
        self._thread = threading.Lock()

    def __enter__(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError("a SharedRings was inherited by fork; open the file in the child")
        self._thread.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread.release()
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread.release()


class SharedRings:
    """The rings of every (tier, bucket) in one shared memory-mapped file; see the module doc.

    ``emb`` (slots, capacity, dim), ``cell`` and ``stamp`` (slots, capacity) are CPU tensors on
    the mapping; ``ints`` and ``floats`` view the per-slot metadata (``META_FIELDS`` values per
    slot, the same bytes read as int64 and as float64). Change them only under ``lock``.
    """

    def __init__(self, path: Path, fd: int, mapping: mmap.mmap, header: _Header) -> None:
        self.path = path
        self.tiers, self.buckets, self.capacity, self.dim = header
        self._index = {tier: i for i, tier in enumerate(self.tiers)}
        layout = _Layout(len(self.tiers), self.buckets, self.capacity, self.dim)
        self.slots = layout.slots
        entries = self.slots * self.capacity
        self.emb = torch.frombuffer(
            mapping, dtype=torch.float32, count=entries * self.dim, offset=layout.emb
        ).view(self.slots, self.capacity, self.dim)
        self.cell = torch.frombuffer(
            mapping, dtype=torch.int64, count=entries, offset=layout.cell
        ).view(self.slots, self.capacity)
        self.stamp = torch.frombuffer(
            mapping, dtype=torch.float64, count=entries, offset=layout.stamp
        ).view(self.slots, self.capacity)
        meta = memoryview(mapping)[layout.meta : layout.meta + self.slots * META_FIELDS * 8]
        self.ints = meta.cast("q")
        self.floats = meta.cast("d")
        self.lock = _HostLock(fd)
        # The tensors keep the mapping alive; the descriptor (the flock) lives as long as this.
        weakref.finalize(self, os.close, fd)

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        tiers: Sequence[str],
        buckets: int = 64,
        capacity: int = 4096,
        dim: int = 128,
    ) -> SharedRings:
        """A fresh, empty file at ``path`` (replacing any), opened. Called once per server, by the
        parent, before the workers start."""
        names = list(tiers)
        if not names or len(set(names)) != len(names) or not all(isinstance(t, str) for t in names):
            raise ModulationArgumentError("tiers", tiers, "have to be distinct names, at least one")
        for name, value in (("buckets", buckets), ("capacity", capacity), ("dim", dim)):
            if value < 1:
                raise ModulationArgumentError(name, value, "has to be at least 1")
        text = json.dumps(names).encode()
        if _HEADER.size + 4 + len(text) > _PAGE:
            raise ModulationArgumentError("tiers", tiers, f"have to fit in {_PAGE} bytes as JSON")
        header = _HEADER.pack(_MAGIC, _VERSION, buckets, capacity, dim)
        header += struct.pack("<I", len(text)) + text
        path = Path(path)
        # Written aside and renamed: a process still mapping the old file keeps its pages (a
        # truncated mapped file would fault), and no worker can open a half-written header.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(header)
            f.truncate(_Layout(len(names), buckets, capacity, dim).total)  # sparse: no zeros
        os.replace(tmp, path)
        return cls.open(path)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        tiers: Sequence[str] | None = None,
        buckets: int | None = None,
        capacity: int | None = None,
        dim: int | None = None,
    ) -> SharedRings:
        """The file at ``path``, mapped for this process. The settings given are checked against
        the file's header (``ModulationArgumentError``, a ValueError, naming the first that
        differs); ``ReplayMemory(shared=...)`` checks buckets, capacity and dim again."""
        path = Path(path)
        fd = os.open(path, os.O_RDWR)
        try:
            head = os.pread(fd, _PAGE, 0)
            header = _parse(path, head, os.fstat(fd).st_size)
            mapping = mmap.mmap(fd, _Layout(len(header[0]), *header[1:]).total)
        except BaseException:
            os.close(fd)
            raise
        store = cls(path, fd, mapping, header)
        store.check(tiers=tiers, buckets=buckets, capacity=capacity, dim=dim)
        return store

    def check(
        self,
        *,
        tiers: Sequence[str] | None = None,
        buckets: int | None = None,
        capacity: int | None = None,
        dim: int | None = None,
    ) -> None:
        """Raise ``ModulationArgumentError`` naming the first given setting the file differs in."""
        wanted = (
            ("tiers", None if tiers is None else tuple(tiers), self.tiers),
            ("buckets", buckets, self.buckets),
            ("capacity", capacity, self.capacity),
            ("dim", dim, self.dim),
        )
        for name, want, have in wanted:
            if want is not None and want != have:
                raise ModulationArgumentError(name, want, f"has to match {self.path}'s {have!r}")

    def slot(self, tier: str, bucket: int) -> int | None:
        """The slot of (tier, bucket), None for a tier the file has no rings for."""
        i = self._index.get(tier)
        return None if i is None else i * self.buckets + bucket

    def entries(self) -> int:
        """Entries stored over all slots."""
        with self.lock:
            return sum(self.ints[s * META_FIELDS] for s in range(self.slots))

    def clear(self) -> None:
        """Forget every entry, for every process."""
        with self.lock:
            for s in range(self.slots):
                at = s * META_FIELDS
                self.ints[at] = self.ints[at + 1] = self.ints[at + 2] = 0  # size, head, unordered


def _parse(path: Path, head: bytes, size: int) -> _Header:
    """(tiers, buckets, capacity, dim) of a header, checked to describe a file of ``size``."""
    if len(head) < _HEADER.size + 4 or head[: len(_MAGIC)] != _MAGIC:
        raise ValueError(f"{path} is not a replay memory file")
    _, version, buckets, capacity, dim = _HEADER.unpack_from(head)
    if version != _VERSION:
        raise ValueError(f"{path} is a version {version} replay memory file, not {_VERSION}")
    (length,) = struct.unpack_from("<I", head, _HEADER.size)
    start = _HEADER.size + 4
    tiers = tuple(json.loads(head[start : start + length]))
    if size < _Layout(len(tiers), buckets, capacity, dim).total:
        raise ValueError(f"{path} is shorter than its header says (truncated?)")
    return tiers, buckets, capacity, dim
