"""The seeded synthetic extreme-classification generator (DESIGN.md section 8).

Shape of the task:
- labels have power-law frequencies: the label of frequency rank r is drawn with probability
  proportional to 1 / (r + 1) ** label_alpha (ranks are shuffled over label ids);
- each label owns a sparse prototype: `proto_nnz` feature ids with weights in [0.5, 1.5];
- an example mixes 1 to `max_labels` labels: about (1 - noise) * nnz of its nonzeros are drawn from its
  labels' prototypes, the rest are Zipf-distributed noise features (exponent noise_alpha);
- rows are L2-normalised.

Two seeds, on purpose: `task` fixes the prototypes and label frequencies (the "world"), `seed` fixes the
examples. Train and test sets made with the same `task` and different `seed` are two samples of the same
problem, so a model trained on one can be measured on the other.

Speed: nothing is stored per label. A prototype's j-th feature and weight are a hash of (task, label, j)
(splitmix64 in numpy uint64 arithmetic), so 670,091 labels cost no memory, and every chunk of rows is
generated with whole-array numpy operations. Rows are made in fixed blocks of BLOCK rows, each from its own
SeedSequence((seed, block)), so any row range can be produced on its own and the result does not depend
on how a caller chunks the work.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from boltc.errors import BoltError

BLOCK = 8192
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fast, well-spread hash of uint64 values."""
    with np.errstate(over="ignore"):
        x = x + _GOLD
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


@dataclass(frozen=True)
class SynthSpec:
    rows: int = 10000
    features: int = 135909
    labels: int = 670091
    seed: int = 0
    task: int = 0
    nnz: int = 75                 # average nonzeros per row before de-duplication
    max_labels: int = 3
    proto_nnz: int = 96
    noise: float = 0.2            # share of a row's nonzeros that are noise
    label_alpha: float = 1.0
    noise_alpha: float = 1.1

    @classmethod
    def from_options(cls, options: dict) -> "SynthSpec":
        known = set(cls.__dataclass_fields__)
        opts = {k: v for k, v in options.items() if k != "kind"}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise BoltError(f"synthetic(...) has no option {unknown[0]!r} (options: {', '.join(sorted(known))})")
        spec = cls(**{k: (float(v) if isinstance(getattr(cls, k), float) else int(v)) for k, v in opts.items()})
        if spec.rows < 0 or spec.features < 1 or spec.labels < 1 or spec.nnz < 1 or spec.max_labels < 1:
            raise BoltError("synthetic(...) needs rows >= 0 and features, labels, nnz, max_labels >= 1")
        if not 0.0 <= spec.noise < 1.0:
            raise BoltError("synthetic(...) noise must be in [0, 1)")
        return spec

    def as_dict(self) -> dict:
        return {"kind": "synthetic", **asdict(self)}


class SyntheticTask:
    """The world shared by every sample with the same `task`: label frequencies and prototypes."""

    def __init__(self, spec: SynthSpec):
        self.spec = spec
        rng = np.random.default_rng([spec.task, 0x5EED])
        ranks = np.arange(1, spec.labels + 1, dtype=np.float64)
        self.label_cdf = np.cumsum(ranks ** -spec.label_alpha)
        self.label_cdf /= self.label_cdf[-1]
        self.label_of_rank = rng.permutation(spec.labels).astype(np.int64)
        franks = np.arange(1, spec.features + 1, dtype=np.float64)
        self.noise_cdf = np.cumsum(franks ** -spec.noise_alpha)
        self.noise_cdf /= self.noise_cdf[-1]
        self.feature_of_rank = rng.permutation(spec.features).astype(np.int64)
        self.key = np.uint64(_mix(np.array([spec.task], dtype=np.uint64))[0])

    def prototype(self, labels: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feature id and weight of position j of each label's prototype (hashed, never stored)."""
        s = self.spec
        h = _mix((labels.astype(np.uint64) * np.uint64(s.proto_nnz) + j.astype(np.uint64)) ^ self.key)
        feat = (h % np.uint64(s.features)).astype(np.int64)
        weight = 0.5 + ((h >> np.uint64(40)).astype(np.float64) / float(1 << 24))
        return feat, weight.astype(np.float32)

    def block(self, seed: int, b: int, n: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """Rows [b*BLOCK, b*BLOCK + n) of the sample `seed`."""
        s = self.spec
        rng = np.random.default_rng(np.random.SeedSequence([seed, b, 0xB017]))
        k = rng.integers(1, s.max_labels + 1, size=n)
        slot_row = np.repeat(np.arange(n), k)
        slot_label = self.label_of_rank[np.minimum(np.searchsorted(self.label_cdf, rng.random(slot_row.size)),
                                                   s.labels - 1)]
        n_proto = max(int(round(s.nnz * (1.0 - s.noise))), 1)
        n_noise = s.nnz - n_proto
        # prototype draws, round robin over the row's labels; each label slot walks its prototype from a
        # random offset, so the draws of one slot hit distinct positions (no wasted duplicate nonzeros)
        first_slot = np.concatenate(([0], np.cumsum(k)[:-1]))
        t = np.arange(n_proto)[None, :]
        slot = first_slot[:, None] + t % k[:, None]
        offset = rng.integers(0, s.proto_nnz, size=slot_row.size)
        pos = (offset[slot] + t // k[:, None]) % s.proto_nnz
        lab = slot_label[slot.ravel()]
        feat, w = self.prototype(lab, pos.ravel())
        rows = [np.repeat(np.arange(n), n_proto)]
        cols = [feat]
        vals = [w]
        if n_noise > 0:
            r = np.minimum(np.searchsorted(self.noise_cdf, rng.random(n * n_noise)), s.features - 1)
            rows.append(np.repeat(np.arange(n), n_noise))
            cols.append(self.feature_of_rank[r])
            vals.append((0.1 + 0.4 * rng.random(n * n_noise)).astype(np.float32))
        X = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(n, s.features), dtype=np.float32)
        X.sum_duplicates()
        norms = np.sqrt(np.add.reduceat(X.data.astype(np.float64) ** 2, X.indptr[:-1])) if X.nnz else np.zeros(n)
        X.data /= np.repeat(norms, np.diff(X.indptr)).astype(np.float32)
        Y = sp.csr_matrix((np.ones(slot_row.size, np.float32), (slot_row, slot_label)), shape=(n, s.labels))
        Y.sum_duplicates()
        Y.data[:] = 1.0
        return X, Y


def generate(spec: SynthSpec | dict, start: int = 0, stop: int | None = None) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Rows [start, stop) of the sample described by `spec` as (X, Y) CSR (int32 indices, int64 indptr)."""
    if isinstance(spec, dict):
        spec = SynthSpec.from_options(spec)
    stop = spec.rows if stop is None else min(stop, spec.rows)
    task = SyntheticTask(spec)
    xs, ys = [], []
    for b in range(start // BLOCK, (stop + BLOCK - 1) // BLOCK if stop > start else start // BLOCK):
        lo = b * BLOCK
        X, Y = task.block(spec.seed, b, min(BLOCK, spec.rows - lo))
        a, z = max(start - lo, 0), min(stop - lo, X.shape[0])
        xs.append(X[a:z])
        ys.append(Y[a:z])
    if not xs:
        return (sp.csr_matrix((0, spec.features), dtype=np.float32), sp.csr_matrix((0, spec.labels), dtype=np.float32))
    X, Y = sp.vstack(xs, format="csr"), sp.vstack(ys, format="csr")
    for m in (X, Y):
        m.indices = m.indices.astype(np.int32, copy=False)
        m.indptr = m.indptr.astype(np.int64, copy=False)
        m.has_sorted_indices = True
    return X, Y


def iter_blocks(spec: SynthSpec | dict):
    """(first_row, X, Y) per block: for writing data larger than memory."""
    if isinstance(spec, dict):
        spec = SynthSpec.from_options(spec)
    task = SyntheticTask(spec)
    for b in range((spec.rows + BLOCK - 1) // BLOCK):
        X, Y = task.block(spec.seed, b, min(BLOCK, spec.rows - b * BLOCK))
        yield b * BLOCK, X, Y
