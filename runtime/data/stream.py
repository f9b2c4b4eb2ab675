"""Training data larger than memory: an XC / svmlight file read in chunks, every epoch.

`StreamingDataset` stands in for a Dataset in `Trainer.fit` and `evaluate`: it knows its row count (the
XC header, or one newline-counting pass for svmlight) and yields batches of an epoch while holding one
shuffle window of rows at a time.

Decisions:
- When: `file("big.txt", stream=true)` asks for it; left out (auto), a file streams when its rows would
  take more than STREAM_SHARE of the memory available now (estimated from its size: parsed CSR is about
  CSR_PER_TEXT_BYTE of the text; gzip text about GZIP_RATIO times the compressed size). Only training
  and evaluation stream; `predict` reads its (usually small) input whole.
- Order: rows are shuffled within windows of about WINDOW_BYTES (64 MB) of parsed data, windows in file order,
  a fresh permutation per (seed, epoch, window). Batches are full across window boundaries (a window's
  last rows wait for the next one), so an epoch has ceil(rows / batch) batches like an in-memory one
  and the learning-rate schedule and table upkeep see the same step counts. A file sorted by label
  should be shuffled on disk first (`boltc synth` writes shuffled rows).
- The adaptive sampler needs every row's features at hand to score them, so streaming trains with the
  uniform order; asking for nw_sketch on streamed data is an error that says so.
- Resume works at epoch boundaries, as for in-memory data: an epoch's batches depend only on (seed,
  epoch) and the file.
"""
from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp

from boltc.errors import DataError, Location
from boltc.runtime.data import xcformat
from boltc.runtime.data.dataset import Batch, checked_dataset, l2_normalize_rows, take_rows

STREAM_SHARE = 0.5            # stream when the parsed rows would take more than this share of free memory
CSR_PER_TEXT_BYTE = 0.55      # "123:0.0812 " is ~14 bytes of text per nonzero, 8 as CSR (0.53 measured)
GZIP_RATIO = 4.0              # typical compression of XC text
WINDOW_BYTES = 64 << 20       # parsed rows shuffled together (held once, plus the chunks being joined)


def available_memory() -> int:
    """Bytes of memory available now (Linux MemAvailable; elsewhere a large number: never stream)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def estimated_bytes(path: str) -> int:
    size = os.path.getsize(path)
    if str(path).endswith(".gz"):
        size = int(size * GZIP_RATIO)
    return int(size * CSR_PER_TEXT_BYTE)


def should_stream(path: str, asked: bool | None) -> bool:
    if asked is not None:
        return bool(asked)
    return estimated_bytes(path) > STREAM_SHARE * available_memory()


def count_rows(path: str, fmt: str) -> int:
    """Rows of a file: the XC header's count, else its non-empty lines (one pass, no parsing)."""
    with xcformat.open_binary(path) as f:
        if fmt == "xc":
            return xcformat.read_header(f, path)[0]
        n, prev = 0, 10                            # a line starts where a non-newline follows a newline
        for block in iter(lambda: f.read(1 << 24), b""):
            a = np.frombuffer(block, np.uint8)
            before = np.empty_like(a)
            before[0], before[1:] = prev, a[:-1]
            n += int(np.count_nonzero((a != 10) & (before == 10)))
            prev = a[-1]
        return n


class StreamingDataset:
    """An XC / svmlight training file read in chunks each epoch (see the module docstring)."""

    streaming = True
    class_names = None

    def __init__(self, path: str, fmt: str, plan: dict, check, normalize=None,
                 window_bytes: int = WINDOW_BYTES, chunk_bytes: int = xcformat.CHUNK_BYTES):
        """`check(X, Y, where) -> Dataset` validates and widens a chunk as the in-memory loader does;
        `normalize(X) -> X` (or None) scales rows."""
        self.path, self.fmt, self.plan = str(path), fmt, plan
        self.source = self.path
        self._check, self._normalize = check, normalize
        self.window_bytes, self.chunk_bytes = int(window_bytes), int(chunk_bytes)
        self._rows = count_rows(self.path, fmt)
        self.input_name = plan["inputs"][0]["name"]
        self.meta = {"streamed": True}

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def labels(self):
        """Not held in memory; a truthy marker so callers that check for labels accept the file (the
        chunks' labels are checked as they are read)."""
        return True

    def take(self, rows):
        raise DataError("streamed data is read in file order and cannot be indexed; it trains with the "
                        "uniform sampler only", Location(self.path, 0))

    def _chunks(self):
        for c in xcformat.iter_chunks(self.path, self.fmt, chunk_bytes=self.chunk_bytes):
            X = self._normalize(c.X) if self._normalize else c.X
            ds = self._check(X, c.Y, self.path)
            yield ds.inputs[self.input_name], ds.labels

    def _windows(self):
        """(X, Y) of about window_bytes of parsed rows each, in file order."""
        xs, ys, held = [], [], 0
        for X, Y in self._chunks():
            xs.append(X)
            ys.append(Y)
            held += _nbytes(X) + _nbytes(Y)
            if held >= self.window_bytes:
                window = _vstack(xs), _vstack(ys)
                xs, ys, held = [], [], 0           # the chunks go before the window is used
                yield window
                window = None                      # and the window before the next one is read
        if xs:
            yield _vstack(xs), _vstack(ys)

    def batches(self, epoch: int, batch: int, seed: int):
        """(row ids in the file, Batch) of one epoch; every batch full but possibly the last. A window's
        rows are gathered batch by batch through its permutation (no permuted copy of the window)."""
        held: list = []                            # (row ids, X, Y) pieces of the batch being filled
        n_held = 0
        first_row = 0
        for w, (X, Y) in enumerate(self._windows()):
            perm = np.random.default_rng([int(seed), int(epoch), w, 0x57E]).permutation(X.shape[0])
            s = 0
            while s < perm.size:
                idx = perm[s:s + batch - n_held]
                s += idx.size
                held.append((first_row + idx, take_rows(X, idx), take_rows(Y, idx)))
                n_held += idx.size
                if n_held == batch:
                    yield self._batch(held)
                    held, n_held = [], 0
            first_row += perm.size
            X = Y = None                            # free this window before the next is parsed
        if n_held:
            yield self._batch(held)

    def _batch(self, pieces):
        rows = np.concatenate([p[0] for p in pieces]).astype(np.int64)
        X, Y = _vstack([p[1] for p in pieces]), _vstack([p[2] for p in pieces])
        return rows, Batch(inputs={self.input_name: X}, labels=Y, rows=rows)

    def eval_batches(self, batch: int):
        """Labelled batches in file order (evaluation)."""
        first = 0
        for X, Y in self._chunks():
            for s in range(0, X.shape[0], batch):
                rows = np.arange(first + s, first + min(s + batch, X.shape[0]), dtype=np.int64)
                yield Batch(inputs={self.input_name: X[s:s + batch]}, labels=Y[s:s + batch], rows=rows)
            first += X.shape[0]


def _nbytes(m) -> int:
    if sp.issparse(m):
        return m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
    return np.asarray(m).nbytes


def _vstack(parts):
    if len(parts) == 1:
        return parts[0]
    if sp.issparse(parts[0]):
        return sp.vstack(parts, format="csr")
    return np.concatenate(parts)


def open_streaming(path: str, fmt: str, plan: dict, source: dict) -> StreamingDataset:
    inputs = plan.get("inputs") or []
    if len(inputs) != 1 or inputs[0].get("kind") not in ("sparse", "dense"):
        raise DataError("a streamed XC/svmlight file feeds a model with exactly one sparse or dense input",
                        Location(path, 0))
    norm = l2_normalize_rows if source.get("normalize") == "l2" else None
    return StreamingDataset(path, fmt, plan, lambda X, Y, where: checked_dataset(X, Y, inputs[0], plan, where), norm)

