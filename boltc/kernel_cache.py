"""The on-disk cache of compiled kernels: one self-checking file per entry, safe to share.

Where: $BOLTC_CACHE, else ~/.cache/boltc. `BOLTC_CACHE=off` turns it off (always compile).

Decisions:
- An entry is `MAGIC + sha256(payload) hex + "\\n" + payload`. A reader that finds anything else (a
  truncated file, a disk error, another program's file, a format of another boltc) treats it as a miss,
  compiles, and replaces the entry: a bad entry costs one compile, never a crash or a wrong kernel.
- Writes go to a temporary file in the same folder, then `os.replace` (atomic on POSIX): a reader sees
  the old entry or the new one, never half of one. A failed write (read-only folder, full disk) removes
  its temporary file and is otherwise ignored: the process keeps its compiled code, it just is not cached.
- Two processes compiling the same plan at once (a tuning search starting its trials): the first takes
  an advisory lock (`fcntl.flock` on `<key>.lock`) and compiles; the others wait for it and then read
  its entry instead of compiling too. Where no lock can be taken (read-only folder, no fcntl) each
  process compiles on its own; the atomic replace keeps that correct. The kernel drops the lock when
  its holder dies, so a killed compile never blocks the next one.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

MAGIC = b"boltc-cache 1\n"
_HEX = 64


def cache_dir() -> Path | None:
    """The cache folder, or None when caching is off."""
    d = os.environ.get("BOLTC_CACHE")
    if d and d.lower() in ("off", "0", "none"):
        return None
    return Path(d) if d else Path.home() / ".cache" / "boltc"


def read(path: Path) -> bytes | None:
    """The payload of a valid entry, else None (missing, unreadable, truncated or foreign)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    head = len(MAGIC) + _HEX + 1
    if len(raw) <= head or not raw.startswith(MAGIC) or raw[head - 1:head] != b"\n":
        return None
    payload = raw[head:]
    if hashlib.sha256(payload).hexdigest().encode() != raw[len(MAGIC):head - 1]:
        return None
    return payload


def write(path: Path, payload: bytes) -> bool:
    """Store an entry atomically; False (and nothing left behind) when the folder is not writable."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False


@contextlib.contextmanager
def compiling(key: str):
    """Hold the key's lock while compiling it (see the module note); a no-op where none can be taken."""
    d = cache_dir()
    fd = None
    try:
        import fcntl  # optional: POSIX only (elsewhere compiling takes no lock)
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except (OSError, ImportError, AttributeError, TypeError):
        if fd is not None:
            os.close(fd)
        fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)          # closing drops the flock


def cached(key: str, suffixes: tuple[str, ...], build) -> tuple[tuple[bytes, ...], bool]:
    """(payloads, hit): the entries `<key><suffix>` from the cache, or `build()` (which returns one
    payload per suffix) stored there. `hit` says whether the cache served them."""
    d = cache_dir()
    if d is None:
        return tuple(build()), False

    def lookup():
        got = tuple(read(d / f"{key}{s}") for s in suffixes)
        return got if all(p is not None for p in got) else None

    found = lookup()
    if found is not None:
        return found, True
    with compiling(key):
        found = lookup()                  # another process may have built it while we waited
        if found is not None:
            return found, True
        built = tuple(build())
        for s, payload in zip(suffixes, built):
            write(d / f"{key}{s}", payload)
    return built, False
