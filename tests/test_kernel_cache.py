"""The on-disk kernel cache (boltc/kernel_cache.py): two processes compiling one plan at once, a
corrupted entry, a read-only or full cache folder. The oracle for "the right kernel" is the kernel's
own result on a hand-computed case, and the compiled object of a cache that was never touched."""
import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest

from boltc import codegen, kernel_cache
from boltc.lower import fc
from native_helpers import runs_right
from boltc.lower.builder import KernelModule


def _ir() -> str:
    km = KernelModule()
    fc.dense_fc_fwd(km, "dot", 8, 2, "linear", False, False)
    return km.ir_text()


def _leftovers(d) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".tmp-"))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped byte", "empty"])
def test_a_corrupted_entry_is_recompiled_and_replaced(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("BOLTC_CACHE", str(tmp_path))
    good, key = codegen.cached_object(_ir())
    entry = tmp_path / f"{key}.o"
    raw = entry.read_bytes()
    bad = {"garbage": b"\x7fELF not really an object", "truncated": raw[: len(raw) // 2],
           "flipped byte": raw[:-10] + bytes([raw[-10] ^ 0xFF]) + raw[-9:], "empty": b""}[damage]
    entry.write_bytes(bad)
    assert kernel_cache.read(entry) is None
    obj, key2 = codegen.cached_object(_ir())
    assert key2 == key and obj == good
    runs_right(obj)
    assert kernel_cache.read(entry) == good            # the entry was repaired
    assert _leftovers(tmp_path) == []


def _make_read_only(d, monkeypatch) -> None:
    """chmod the folder read-only; where that does not stop this process (root ignores it), the folder
    refuses new files the way the OS would for anybody else."""
    d.chmod(0o555)
    probe = d / ".probe"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(d))
    monkeypatch.setattr(kernel_cache.tempfile, "mkstemp", refuse)


def test_a_read_only_cache_folder_serves_hits_and_compiles_misses(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("BOLTC_CACHE", str(d))
    warm, key = codegen.cached_object(_ir())
    _make_read_only(d, monkeypatch)
    try:
        obj, _ = codegen.cached_object(_ir())              # a hit: read-only is enough
        assert obj == warm
        other = _ir() + "\n; another plan\n"
        obj2, key2 = codegen.cached_object(other)           # a miss: compiled, not stored, no crash
        assert key2 != key
        runs_right(obj2)
        assert not (d / f"{key2}.o").exists()
        assert _leftovers(d) == []
    finally:
        d.chmod(0o755)


def test_a_full_disk_leaves_no_partial_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("BOLTC_CACHE", str(tmp_path))
    real_fdopen = os.fdopen

    class FullFile:
        def __init__(self, fd, mode):
            self.f = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:100])
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(kernel_cache.os, "fdopen", FullFile)
    obj, key = codegen.cached_object(_ir())
    runs_right(obj)
    assert not (tmp_path / f"{key}.o").exists()
    assert _leftovers(tmp_path) == []


_WORKER = textwrap.dedent("""
    import json, os, sys, time
    from boltc import codegen
    from boltc.lower import fc
    from boltc.lower.builder import KernelModule
    go = sys.argv[1]
    while not os.path.exists(go):          # start together
        time.sleep(0.001)
    km = KernelModule()
    fc.dense_fc_fwd(km, "dot", 8, 2, "linear", False, False)
    compiled = []
    real = codegen.compile_module
    codegen.compile_module = lambda *a, **k: compiled.append(1) or real(*a, **k)
    obj, key = codegen.cached_object(km.ir_text())
    print(json.dumps({"key": key, "compiled": len(compiled), "obj": obj.hex()}))
""")


def test_two_processes_compiling_the_same_plan_at_once(tmp_path):
    cache, go = tmp_path / "cache", tmp_path / "go"
    env = dict(os.environ, BOLTC_CACHE=str(cache))
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(go)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    go.write_text("")
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert results[0]["key"] == results[1]["key"]
    assert results[0]["obj"] == results[1]["obj"]
    # the lock: one of them compiled, the other waited and read its entry
    assert sorted(r["compiled"] for r in results) == [0, 1]
    obj = bytes.fromhex(results[0]["obj"])
    assert kernel_cache.read(cache / f"{results[0]['key']}.o") == obj
    runs_right(obj)
    assert _leftovers(cache) == []


def test_cache_off_always_compiles(tmp_path, monkeypatch):
    monkeypatch.setenv("BOLTC_CACHE", "off")
    monkeypatch.setenv("HOME", str(tmp_path))
    obj, _ = codegen.cached_object(_ir())
    runs_right(obj)
    assert list(tmp_path.iterdir()) == []


def _plan_ir(n: int) -> str:
    """A distinct small module per n (its own cache key)."""
    km = KernelModule()
    fc.dense_fc_fwd(km, "dot", 8 + n, 2, "linear", False, False)
    return km.ir_text()


def _age(d, key, seconds_ago: float) -> None:
    """Set a key's entries' modification time (the pruning order) explicitly: no test of clock ticks."""
    import time
    t = time.time() - seconds_ago
    for p in d.glob(f"{key}.*"):
        os.utime(p, (t, t))


def test_the_cache_stays_under_its_size_limit_dropping_the_least_recently_used(tmp_path, monkeypatch):
    monkeypatch.setenv("BOLTC_CACHE", str(tmp_path))
    monkeypatch.delenv("BOLTC_CACHE_MAX_MB", raising=False)
    _, k0 = codegen.cached_object(_plan_ir(0))
    size = (tmp_path / f"{k0}.o").stat().st_size
    # room for two entries of about this size, not three
    monkeypatch.setenv("BOLTC_CACHE_MAX_MB", str(2.5 * size / (1 << 20)))
    _age(tmp_path, k0, 300)
    _, k1 = codegen.cached_object(_plan_ir(1))
    _age(tmp_path, k1, 200)
    obj0, _ = codegen.cached_object(_plan_ir(0))          # a hit: k0 is now the most recently used
    assert (tmp_path / f"{k0}.o").stat().st_mtime > (tmp_path / f"{k1}.o").stat().st_mtime
    obj2, k2 = codegen.cached_object(_plan_ir(2))         # the third entry: k1, used longest ago, goes
    names = {p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")}
    assert f"{k1}.o" not in names and {f"{k0}.o", f"{k2}.o"} <= names
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 2.5 * size
    assert kernel_cache.read(tmp_path / f"{k0}.o") == obj0 and kernel_cache.read(tmp_path / f"{k2}.o") == obj2
    runs_right(obj0)                                      # the 8-wide kernel of _plan_ir(0)
    # a pruned plan compiles again and is cached again
    obj1, again = codegen.cached_object(_plan_ir(1))
    assert again == k1 and kernel_cache.read(tmp_path / f"{k1}.o") == obj1


def test_the_entry_just_written_stays_even_when_alone_above_the_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("BOLTC_CACHE", str(tmp_path))
    monkeypatch.setenv("BOLTC_CACHE_MAX_MB", "0.000001")    # a byte: smaller than any entry
    obj, key = codegen.cached_object(_plan_ir(3))
    assert kernel_cache.read(tmp_path / f"{key}.o") == obj
    _, other = codegen.cached_object(_plan_ir(4))
    assert not (tmp_path / f"{key}.o").exists() and (tmp_path / f"{other}.o").exists()


@pytest.mark.parametrize("setting", ["0", "not a number"])
def test_no_limit_or_a_malformed_one_keeps_entries(tmp_path, monkeypatch, setting):
    monkeypatch.setenv("BOLTC_CACHE", str(tmp_path))
    monkeypatch.setenv("BOLTC_CACHE_MAX_MB", setting)
    keys = [codegen.cached_object(_plan_ir(n))[1] for n in (5, 6, 7)]
    assert all((tmp_path / f"{k}.o").exists() for k in keys)
    assert kernel_cache.max_bytes() == (None if setting == "0" else kernel_cache.DEFAULT_MAX_MB << 20)
