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
- Size: after each write the folder is kept under `BOLTC_CACHE_MAX_MB` (default 1024 MB; 0 = no limit):
  the entries used longest ago go first (a hit refreshes its entry's modification time, so this is
  least-recently-used), all the files of one key together, never the entry just written. Pruning is
  best effort: another process may prune or read at the same time, and a reader that loses an entry it
  was about to read only compiles again. A tuning search compiles a plan per trial (a few MB each), so
  an unbounded folder grows by every model ever tried.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

MAGIC = b"boltc-cache 1\n"
_HEX = 64
DEFAULT_MAX_MB = 1024


def cache_dir() -> Path | None:
    """The cache folder, or None when caching is off."""
    d = os.environ.get("BOLTC_CACHE")
    if d and d.lower() in ("off", "0", "none"):
        return None
    return Path(d) if d else Path.home() / ".cache" / "boltc"


def max_bytes() -> int | None:
    """The folder's size limit in bytes (BOLTC_CACHE_MAX_MB), or None for no limit."""
    text = os.environ.get("BOLTC_CACHE_MAX_MB", "")
    try:
        mb = float(text) if text.strip() else DEFAULT_MAX_MB
    except ValueError:
        mb = DEFAULT_MAX_MB           # a malformed setting must not break compiling: the default holds
    return None if mb <= 0 else int(mb * (1 << 20))


def prune(d: Path, keep: str | None = None, limit: int | None = None) -> int:
    """Delete the least recently used keys' files until the folder's entries fit `limit` bytes (default
    max_bytes()); `keep` (a key) is never deleted. Returns the bytes freed."""
    limit = max_bytes() if limit is None else limit
    if limit is None:
        return 0
    keys: dict[str, list] = {}
    try:
        for entry in os.scandir(d):
            name = entry.name
            if name.startswith(".") or name.endswith(".lock") or not entry.is_file(follow_symlinks=False):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue                       # removed meanwhile by another process
            key = name.split(".", 1)[0]
            files = keys.setdefault(key, [0.0, 0, []])
            files[0] = max(files[0], st.st_mtime)
            files[1] += st.st_size
            files[2].append(entry.path)
    except OSError:
        return 0
    total = sum(size for _, size, _ in keys.values())
    freed = 0
    for key, (_, size, paths) in sorted(keys.items(), key=lambda kv: kv[1][0]):
        if total <= limit:
            break
        if key == keep:
            continue
        for path in paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(d, f"{key}.lock"))
        total -= size
        freed += size
    return freed


def _touch(path: Path) -> None:
    """Mark an entry as used now (the pruning order); a read-only folder just keeps the old time."""
    with contextlib.suppress(OSError):
        os.utime(path)


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
        for s in suffixes:
            _touch(d / f"{key}{s}")
        return found, True
    with compiling(key):
        found = lookup()                  # another process may have built it while we waited
        if found is not None:
            return found, True
        built = tuple(build())
        stored = [write(d / f"{key}{s}", payload) for s, payload in zip(suffixes, built)]
    if any(stored):
        prune(d, keep=key)
    return built, False
