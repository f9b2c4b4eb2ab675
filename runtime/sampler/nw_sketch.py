"""The Nadaraya-Watson sketch: a loss predictor learnt from the losses the trainer computes anyway.

Method (Daghaghi, Coleman et al., arXiv 2311.13583; DESIGN.md section 5): R independent hash functions,
each a K-bit signed random projection (SRP) of the example's input, index R rows of 2^K buckets. Each
bucket holds a sum of losses and a count. Update: add the example's loss and 1 to its R cells. Query:
predicted loss = (sum of its R loss cells) / (sum of its R count cells). In expectation over the hash
functions, each row's loss cell is sum_i k(q, x_i) y_i and its count cell sum_i k(q, x_i), with the SRP
collision kernel k(q, x) = (1 - angle(q, x)/pi)^K: the ratio is the Nadaraya-Watson estimator with that
kernel, and more rows make it tighter.

This module is the NumPy implementation, which is also the oracle for runtime/sampler/native.py.

Decisions:
- Projections are Gaussian (not +-1), so the collision probability is exactly (1 - angle/pi) per bit and
  the sketch estimates the kernel the tests check against.
- Sparse-aware and memory-bounded: an input wider than `max_proj_rows` is first folded by a fixed signed
  feature hash (count-sketch) into `max_proj_rows` columns, which preserves inner products in
  expectation; a 670k-wide input then needs a few MB of projections instead of GBs. Below the cap the
  map is the identity, so the kernel is exact.
- Cells are float64: decay makes counts fractional, and sums of 1e6+ float32 losses lose digits.
- Empty buckets: when all R count cells of a query are (near) zero the prediction is the prior, the
  count-weighted mean of every loss seen (decayed the same way), so unseen regions are sampled at an
  average rate - neither starved nor favoured.
- Decay multiplies every cell by a factor (cheap: R * 2^K cells); the sampler calls it on refresh.
- Merge is addition of the cells (sketches of several workers with the same seed).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

MAX_PROJ_ROWS = 1 << 15        # fold wider inputs to this many columns (memory: cap * R * K * 4 bytes)
EMPTY_COUNT = 1e-12            # a query whose R count cells sum below this is "empty" -> prior


class SRPHasher:
    """R hash functions of K bits each, over inputs of `in_dim` features (sparse CSR or dense)."""

    def __init__(self, in_dim: int, rows: int, bits: int, seed: int = 0, max_proj_rows: int = MAX_PROJ_ROWS):
        if not (1 <= bits <= 30):
            raise ValueError(f"bits must be in [1, 30], got {bits}")
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        self.in_dim, self.rows, self.bits, self.seed = int(in_dim), int(rows), int(bits), int(seed)
        rng = np.random.default_rng([self.seed, 0x5A3C])
        self.proj_rows = min(self.in_dim, int(max_proj_rows))
        # (proj_rows, R*K): column r*K + k is bit k of row r.
        self.proj = rng.standard_normal((self.proj_rows, self.rows * self.bits), dtype=np.float32)
        if self.proj_rows < self.in_dim:
            self.feat_row = rng.integers(0, self.proj_rows, size=self.in_dim, dtype=np.int32)
            self.feat_sign = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=self.in_dim)
            self._fold = sp.csr_matrix((self.feat_sign, (np.arange(self.in_dim), self.feat_row)),
                                       shape=(self.in_dim, self.proj_rows), dtype=np.float32)
        else:
            self.feat_row = np.arange(self.in_dim, dtype=np.int32)
            self.feat_sign = np.ones(self.in_dim, dtype=np.float32)
            self._fold = None
        self._weights = (np.int64(1) << np.arange(self.bits, dtype=np.int64))

    def project(self, x) -> np.ndarray:
        """(B, R*K) float32 projections of the rows of x."""
        if sp.issparse(x):
            x = sp.csr_matrix(x)
            if self._fold is not None:
                x = x @ self._fold
            return np.asarray(x @ self.proj, dtype=np.float32)
        x = np.asarray(x, dtype=np.float32)
        if self._fold is not None:
            x = np.asarray(self._fold.T @ x.T).T
        return x @ self.proj

    def codes_from_projection(self, z: np.ndarray) -> np.ndarray:
        bitsv = (z > 0).reshape(z.shape[0], self.rows, self.bits).astype(np.int64)
        return (bitsv @ self._weights).astype(np.int32)

    def hash(self, x) -> np.ndarray:
        """(B, R) int32 bucket ids in [0, 2^K)."""
        return self.codes_from_projection(self.project(x))


class NWSketch:
    """R x 2^K cells of (loss sum, count); update / query by bucket ids (B, R)."""

    def __init__(self, rows: int, bits: int):
        self.rows, self.bits = int(rows), int(bits)
        self.loss = np.zeros((self.rows, 1 << self.bits), dtype=np.float64)
        self.count = np.zeros((self.rows, 1 << self.bits), dtype=np.float64)
        self.total_loss = 0.0      # decayed sum of every loss added (for the prior)
        self.total_count = 0.0

    # The flat index of cell (r, bucket) is r * 2^K + bucket; one bincount per update stays vectorised.
    def _flat(self, buckets: np.ndarray) -> np.ndarray:
        buckets = np.asarray(buckets, dtype=np.int64)
        return (buckets + (np.arange(self.rows, dtype=np.int64) << self.bits)[None, :]).ravel()

    def update(self, buckets: np.ndarray, losses: np.ndarray) -> None:
        losses = np.asarray(losses, dtype=np.float64)
        flat = self._flat(buckets)
        size = self.rows << self.bits
        self.loss += np.bincount(flat, weights=np.repeat(losses, self.rows), minlength=size).reshape(self.loss.shape)
        self.count += np.bincount(flat, minlength=size).reshape(self.count.shape)
        self.total_loss += float(losses.sum())
        self.total_count += float(losses.size)

    @property
    def prior(self) -> float:
        return self.total_loss / self.total_count if self.total_count > 0 else 1.0

    def query(self, buckets: np.ndarray) -> np.ndarray:
        """(B,) float64 predicted losses; the prior where every cell of the query is empty."""
        flat = self._flat(buckets)
        b = np.asarray(buckets).shape[0]
        num = self.loss.ravel()[flat].reshape(b, self.rows).sum(axis=1)
        den = self.count.ravel()[flat].reshape(b, self.rows).sum(axis=1)
        out = np.full(b, self.prior, dtype=np.float64)
        seen = den > EMPTY_COUNT
        out[seen] = num[seen] / den[seen]
        return out

    def decay(self, factor: float) -> None:
        self.loss *= factor
        self.count *= factor
        self.total_loss *= factor
        self.total_count *= factor

    def merge(self, other: "NWSketch") -> None:
        if (other.rows, other.bits) != (self.rows, self.bits):
            raise ValueError("cannot merge sketches of different shapes")
        self.loss += other.loss
        self.count += other.count
        self.total_loss += other.total_loss
        self.total_count += other.total_count

    def state_dict(self) -> dict:
        return {"loss": self.loss.copy(), "count": self.count.copy(),
                "total_loss": float(self.total_loss), "total_count": float(self.total_count)}

    def load_state_dict(self, state: dict) -> None:
        loss, count = np.asarray(state["loss"], dtype=np.float64), np.asarray(state["count"], dtype=np.float64)
        if loss.shape != self.loss.shape or count.shape != self.count.shape:
            raise ValueError(f"sketch state has shape {loss.shape}, expected {self.loss.shape}")
        self.loss[...] = loss
        self.count[...] = count
        self.total_loss = float(state["total_loss"])
        self.total_count = float(state["total_count"])


def srp_kernel(q: np.ndarray, x: np.ndarray, bits: int) -> np.ndarray:
    """(Bq, Bx) collision probability of one K-bit SRP hash: (1 - angle/pi)^K (dense inputs)."""
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    cos = np.clip(qn @ xn.T, -1.0, 1.0)
    return (1.0 - np.arccos(cos) / np.pi) ** bits


def exact_nw(q: np.ndarray, x: np.ndarray, y: np.ndarray, bits: int) -> np.ndarray:
    """The exact Nadaraya-Watson estimate at each query with the SRP collision kernel."""
    k = srp_kernel(np.asarray(q, dtype=np.float64), np.asarray(x, dtype=np.float64), bits)
    return (k @ np.asarray(y, dtype=np.float64)) / k.sum(axis=1)
