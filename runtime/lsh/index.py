"""LSHIndex: hash tables that pick the active neurons of a sparse layer (integers only, seeded).

Families (CONTRACTS.md section 5):
- `dwta` (densified winner-take-all, BOLT's default): `tables * hashes` hash functions, each looks at
  `bin_size` input dimensions (drawn from concatenated random permutations of the input, so every dim is
  used before any repeats) and returns the index of the largest value (log2(bin_size) bits). A bin whose
  values are all exactly 0 (a sparse or ReLU input) is "empty" and borrows the code of another hash of
  the same example along a fixed random probe sequence (densification); still empty after the probes: 0.
  A table's bucket = its `hashes` codes concatenated, masked to `range_bits` bits.
- `srp` (signed random projection): `tables * range_bits` hyperplanes with +-1 entries on a random
  sample of the input dims (all dims when that fits in 2^24 entries; sampling keeps memory bounded for
  very wide sparse inputs); bit = projection > 0. The projection is defined to the bit: the signed
  entries summed in float32 in ascending input dimension, left to right (each hash's dims are kept
  sorted), so the native kernel (boltc/lower/select.py srp_hash) gives the same codes as this spec.

Tables are `(tables, 2**range_bits, reservoir)` int32, -1 = empty, preallocated; `counts` holds how many
neurons were offered to each bucket (reservoir sampling: when a bucket is full, a newcomer replaces a
uniform slot with probability reservoir / (count + 1)). `build` fills each bucket with a uniform random
subset of its neurons (the same distribution as offering them one by one to a reservoir).

`select` = labels first, then bucket contents in table order (de-duplicated), then random fill, cut to
exactly `active` ids per example, never a duplicate. In training the fill draws in proportion to how
often each neuron has been a label so far (`training_fill`); at inference, and for hidden layers, it is
uniform.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from boltc.plan import DEFAULT_NEGATIVES, DEFAULT_RANDOM_SHARE  # the plan's hash defaults (choose_hashing writes them)

_CHUNK = 1 << 24          # max elements of a temporary gather (keeps hashing 670k rows in bounded memory)
_PROBES = 10              # densification attempts before an empty DWTA bin falls back to code 0


def training_reserve(layer: dict) -> int:
    """Slots of an output layer's *training* active set kept for uniform random negatives
    (`hash.random_share` of `active`, default 0.25; see `select(reserve=)`). Both executors pass this
    to `select` when labels are given, and 0 at inference."""
    share = float((layer.get("hash") or {}).get("random_share", DEFAULT_RANDOM_SHARE))
    return int(share * layer["active"])


WEIGHTED_ATTEMPTS = 4               # numpy spec: fill rounds drawn by frequency before turning uniform


FILL_REFRESH = 16                   # training steps between rebuilds of a fill table (upkeep.py)



def sorted_unique(a: np.ndarray) -> np.ndarray:
    """np.unique(a) of a 1-d array of non-negative integers (sorted distinct values): a least-significant-
    digit radix sort in 16-bit digits (numpy's stable sort of uint16 is a counting sort) and a neighbour
    test. numpy 2.3+ answers np.unique of integers with a hash table then a sort: 75-135 ms for the 120k
    keys of a delicious batch's missed-label inserts; np.sort alone takes 4.8 ms, this 2.3-2.6 ms
    (numpy 2.4, one thread)."""
    bits = int(a.max()).bit_length() if a.size else 0
    for shift in range(0, bits, 16):
        a = a[np.argsort((a >> shift).astype(np.uint16), kind="stable")]
    return a[np.r_[True, a[1:] != a[:-1]]] if a.size else a

class FillTable:
    """The training fill distribution of an output layer: neuron j has weight count_j + 1.

    `cum` (dim,) int64 cumulative weights (the spec draws j = searchsorted(cum, u, "right") for u
    uniform in [0, cum[-1])); `guide` (dim,) int64 a guide table for the native lookup:
    guide[g] = searchsorted(cum, g * total // dim, "right") is where the search for any u in bucket
    g = u * dim // total can start, so a draw costs a couple of loads instead of a 20-step binary search
    through a table too large for cache (measured at 670k: binary search 9% of the step)."""

    def __init__(self, counts: np.ndarray):
        self.cum = np.cumsum(np.asarray(counts).astype(np.int64) + 1)
        dim, total = self.cum.size, int(self.cum[-1])
        self.guide = np.searchsorted(self.cum, (np.arange(dim, dtype=np.int64) * total) // dim, side="right")
        self.guide = self.guide.astype(np.int64)


def training_fill(layer: dict, counts) -> FillTable | None:
    """The output layer's training fill distribution (weights counts + 1: the training set's label counts,
    or the layer's running `label_count`), or None for a uniform fill (`hash.negatives` = uniform, or no
    counts).

    Decision beyond BOLT (whose fill is uniform): under a full softmax every label is pushed down, over
    an epoch, about as often as it is a target (at the optimum sum_x p(j|x) = count_j). A uniform fill
    pushes each neuron down equally often whatever its frequency, so frequent labels, pushed up at every
    occurrence, grow rows that score high for every input and win a dense argmax while sparse inference
    (which only scores the LSH candidates) hides it. Drawing the fill in proportion to count + 1 restores
    the full softmax's balance in expectation. Measured on the SYNTHETIC 100k-label problem, 1 epoch
    (benchmarks/train_throughput.py --shape 100k): P@1 dense 0.442 / sparse 0.549 uniform, 0.615 / 0.621
    by frequency; (count + 1)^0.75: 0.594 / 0.604; ^0.5: 0.540 / 0.611. A Horvitz-Thompson weight on a
    uniform fill (log 1/pi added to its logits) was tried and fell to 0.20 / 0.50: lazy Adam normalises
    each row's step, so weighting a gradient does not make a rare push count more; how often a row is
    pushed is what counts. Executors get the table through `LSHUpkeep.fill`, rebuilt every FILL_REFRESH
    steps (the counts move slowly; a rebuild is O(dim)). For an in-memory training set the trainer
    passes the data's label counts (`LSHUpkeep.set_label_frequency`) in place of the running ones:
    0.634 / 0.633 on the same problem."""
    mode = (layer.get("hash") or {}).get("negatives", DEFAULT_NEGATIVES)
    if mode == "uniform" or counts is None:
        return None
    return FillTable(counts)


class LSHIndex:
    def __init__(self, family: str, in_dim: int, dim: int, hashes: int, range_bits: int, tables: int,
                 reservoir: int, seed: int = 0, bin_size: int = 8):
        if family not in ("dwta", "srp"):
            raise ValueError(f"unknown hash family {family!r}")
        if family == "dwta" and bin_size & (bin_size - 1):
            raise ValueError("dwta bin_size must be a power of two")
        self.family, self.in_dim, self.dim = family, int(in_dim), int(dim)
        self.hashes, self.range_bits, self.L = int(hashes), int(range_bits), int(tables)
        self.reservoir, self.bin_size = int(reservoir), int(bin_size)
        self.builds = 0
        self.frozen = False          # set by the upkeep after `freeze_after` epochs: no more rebuilds
        self.tables = np.full((self.L, 1 << self.range_bits, self.reservoir), -1, dtype=np.int32)
        self.counts = np.zeros((self.L, 1 << self.range_bits), dtype=np.int32)
        self.rehash(seed)

    # ------------------------------------------------------------ hash functions
    def rehash(self, seed: int) -> None:
        """Draw new hash functions (the tables must then be rebuilt: `build`)."""
        self.seed = int(seed)
        rng = np.random.default_rng([self.seed, 0x15A])
        if self.family == "dwta":
            self.n_hashes = self.L * self.hashes
            width = self.bin_size
        else:
            self.n_hashes = self.L * self.range_bits
            width = self.in_dim if self.in_dim * self.n_hashes <= _CHUNK else max(1, _CHUNK // self.n_hashes)
        need = self.n_hashes * width
        perms = [rng.permutation(self.in_dim) for _ in range(-(-need // self.in_dim))]
        self.idx = np.concatenate(perms)[:need].reshape(self.n_hashes, width).astype(np.int32)
        if self.family == "srp":
            self.signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=self.idx.shape)
            # each hyperplane's dims in ascending order (the summation order of the projection)
            order = np.argsort(self.idx, axis=1, kind="stable")
            self.idx = np.ascontiguousarray(np.take_along_axis(self.idx, order, axis=1))
            self.signs = np.ascontiguousarray(np.take_along_axis(self.signs, order, axis=1))
        else:
            self.signs = np.zeros((0, 0), dtype=np.float32)
            self.probe = np.stack([rng.permutation(self.n_hashes) for _ in range(_PROBES)]).astype(np.int32)

    def _dwta_codes(self, v: np.ndarray) -> np.ndarray:
        """v (n_hashes, bin_size, n) gathered values -> (n_hashes, n) winner index, densified.
        The winner is the first position holding the bin's maximum (np.argmax's tie rule), computed
        with whole-array max/compare passes: several times faster than argmax over a short axis."""
        best = v[:, 0, :].copy()
        for j in range(1, v.shape[1]):
            np.maximum(best, v[:, j, :], out=best)
        # a bin can only be all-zero where its max is 0: check just those (rare for weight rows)
        nonzero = best != 0
        maybe = np.flatnonzero(~nonzero)
        if maybe.size:
            h, n = np.divmod(maybe, best.shape[1])
            sub = v[h, :, n]                                  # (len(maybe), bin_size)
            nonzero.reshape(-1)[maybe] = (sub != 0).any(axis=1)
        last = np.int16(v.shape[1] - 1)
        code = np.full(best.shape, last, dtype=np.int16)
        for j in range(v.shape[1] - 2, -1, -1):           # descending: the smallest j holding the max wins
            code -= (code - np.int16(j)) * (v[:, j, :] == best)
        empty = ~nonzero
        for t in range(_PROBES):
            if not empty.any():
                break
            src = self.probe[t]
            fill = empty & ~empty[src]
            code += (code[src] - code) * fill
            empty &= ~fill
        code *= ~empty                                     # still empty after the probes: code 0
        return code.astype(np.int64)

    def _buckets(self, bits_or_codes: np.ndarray, per_table: int, width_bits: int) -> np.ndarray:
        """(L * per_table, n) codes -> (n, L) int32 buckets: a table's codes concatenated, low bits first."""
        c = bits_or_codes.reshape(self.L, per_table, -1)
        shift = (width_bits * np.arange(per_table, dtype=np.int64))[None, :, None]
        b = (c << shift).sum(axis=1) & ((1 << self.range_bits) - 1)
        return np.ascontiguousarray(b.T).astype(np.int32)

    def hash(self, x) -> np.ndarray:
        """x (B, in_dim) dense or CSR -> (B, L) int32 bucket ids.
        Works on x transposed (in_dim, B) so the gathers are whole contiguous rows."""
        n = x.shape[0]
        flat = self.idx.ravel()
        step = max(1, _CHUNK // max(1, flat.size))
        out = np.empty((n, self.L), dtype=np.int32)
        for s in range(0, n, step):
            part = x[s:s + step]
            m = part.shape[0]
            if self.family == "srp":
                bits = (self._projections(part) > 0).astype(np.int64)
                out[s:s + step] = self._buckets(bits, self.range_bits, 1)
                continue
            if sp.issparse(part):
                xt = sp.csr_matrix(part.T)
                v = xt[flat].toarray()
            else:
                v = np.take(np.ascontiguousarray(np.asarray(part).T), flat, axis=0)   # = [flat], several x faster
            v = v.reshape(self.n_hashes, -1, m)
            out[s:s + step] = self._buckets(self._dwta_codes(v), self.hashes, int(np.log2(self.bin_size)))
        return out

    def full_width(self) -> bool:
        """Whether every SRP hyperplane reads every input dim in order (each idx row is 0..in_dim-1,
        as rehash draws them; a file from before the sorting keeps its own order: the sampled path)."""
        if getattr(self, "_full", (None,))[0] is not self.idx:
            full = (self.family == "srp" and self.idx.shape[1] == self.in_dim
                    and bool((self.idx == np.arange(self.in_dim, dtype=self.idx.dtype)).all()))
            self._full = (self.idx, full)
        return self._full[1]

    def _projections(self, x) -> np.ndarray:
        """SRP: (n_hashes, m) projections of the rows x (m, in_dim), each the float32 sum of its signed
        entries in ascending input dim, left to right (one add per dim: the order the native kernel uses).
        hash() passes at most _CHUNK // idx.size rows, which bounds the sparse case's gathered block."""
        m = x.shape[0]
        acc = np.zeros((self.n_hashes, m), np.float32)
        if sp.issparse(x):
            v = sp.csr_matrix(x.T)[self.idx.ravel()].toarray().reshape(self.n_hashes, -1, m)
            for w in range(self.idx.shape[1]):
                acc += self.signs[:, w, None] * v[:, w, :]
            return acc
        xt = np.ascontiguousarray(np.asarray(x, dtype=np.float32).T)
        full = self.full_width()
        for w in range(self.idx.shape[1]):
            acc += self.signs[:, w, None] * (xt[w][None, :] if full else xt[self.idx[:, w]])  # full: idx[:, w] == w
        return acc

    # ------------------------------------------------------------ tables
    def _build_rng(self) -> np.random.Generator:
        self.builds += 1
        return np.random.default_rng([self.seed, self.builds, 0xB1D])

    def build(self, w_out_major: np.ndarray) -> None:
        """Hash every neuron's weight row (w is (dim, in_dim): pass W.T for in_major) and refill all tables."""
        self._fill(self.hash(w_out_major))

    def build_random(self) -> None:
        """Fill the tables with uniformly random buckets: what hashing i.i.d. random initial weights gives
        in distribution (each DWTA winner / SRP sign is uniform), without the cost of hashing them
        (about a minute of NumPy at 100k neurons). Used for the initial tables only."""
        rng = np.random.default_rng([self.seed, 0x1A17])
        self._fill(rng.integers(0, 1 << self.range_bits, size=(self.dim, self.L)).astype(np.int32))

    def _fill(self, buckets: np.ndarray) -> None:
        """buckets (dim, L): each bucket gets a uniform random subset (reservoir) of its neurons."""
        self.tables.fill(-1)
        self.counts.fill(0)
        rng = self._build_rng()
        nb = 1 << self.range_bits
        perm = rng.permutation(self.dim).astype(np.int32)          # random order inside each bucket
        buckets = buckets[perm]
        flat_tables = self.tables.reshape(self.L, -1)
        # tables in groups of ~2^16 keys: one sort per group (a per-table loop costs more than the
        # sort itself for narrow layers); a stable sort keeps the random order within a bucket
        per = max(1, (1 << 16) // self.dim)
        for t0 in range(0, self.L, per):
            t1 = min(self.L, t0 + per)
            key = (buckets[:, t0:t1].T.astype(np.int64) + (np.arange(t1 - t0) * nb)[:, None]).ravel()
            order = np.argsort(key.astype(np.uint16) if (t1 - t0) * nb <= 1 << 16 else key, kind="stable")
            ks, ids = key[order], np.tile(perm, t1 - t0)[order]
            first = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
            rank = np.arange(ks.size) - np.repeat(first, np.diff(np.r_[first, ks.size]))
            keep = rank < self.reservoir
            flat_tables[t0:t1].reshape(-1)[ks[keep] * self.reservoir + rank[keep]] = ids[keep]
            self.counts[t0:t1] = np.bincount(key, minlength=(t1 - t0) * nb).reshape(t1 - t0, nb)

    def insert(self, ids: np.ndarray, buckets: np.ndarray, rng: np.random.Generator, absent: bool = False,
               apply=None) -> int:
        """Insert neuron ids[i] into its buckets[i] (L,) of every table, reservoir-style, skipping a bucket
        that already holds it (`absent`: the caller knows none does). Returns how many (table, bucket)
        insertions were made. `apply` (default apply_inserts) does the last step: the native backend
        passes its kernel (boltc/lower/select.py insert_pairs, the same arithmetic)."""
        if len(ids) == 0:
            return 0
        nb = 1 << self.range_bits
        keys = (np.arange(self.L, dtype=np.int64)[None, :] * nb + buckets.astype(np.int64)).ravel()
        nid = np.repeat(np.asarray(ids, dtype=np.int32), self.L)
        flat = self.tables.reshape(-1, self.reservoir)
        if not absent:
            present = np.count_nonzero(np.take(flat, keys, axis=0) == nid[:, None], axis=1) > 0   # fast .any
            keys, nid = keys[~present], nid[~present]
        # one insert per (bucket, id) pair, sorted by bucket then id (the order of the draws below)
        pairs = sorted_unique(keys * (self.dim + 1) + nid)
        keys, nid = pairs // (self.dim + 1), (pairs % (self.dim + 1)).astype(np.int32)
        if keys.size == 0:
            return 0
        (apply or self.apply_inserts)(keys, nid, rng.random(keys.size))
        return int(keys.size)

    def insert_tables(self, ids: np.ndarray, buckets: np.ndarray, seed, tables: tuple[int, int] | None = None,
                      apply=None) -> int:
        """`insert(..., absent=True)` into the tables [t0, t1) only, with table t's uniform draws from its
        own generator default_rng([*seed, t]): data-parallel workers each insert a global batch's
        missed labels into their share of one machine's tables, and any division of the tables gives
        the tables one worker inserting into all would give (replicas on other machines pass all).
        ids[i] is absent from its buckets[i] (L,) (a missed label: the lookup found it in none)."""
        t0, t1 = tables or (0, self.L)
        if len(ids) == 0 or t1 <= t0:
            return 0
        nb = 1 << self.range_bits
        keys = (np.arange(t0, t1, dtype=np.int64)[None, :] * nb + buckets[:, t0:t1].astype(np.int64)).ravel()
        nid = np.repeat(np.asarray(ids, dtype=np.int64), t1 - t0)
        pairs = sorted_unique(keys * (self.dim + 1) + nid)     # one insert per (bucket, id), sorted by bucket
        keys, nid = pairs // (self.dim + 1), (pairs % (self.dim + 1)).astype(np.int32)
        cuts = np.searchsorted(keys, np.arange(t0, t1 + 1, dtype=np.int64) * nb)
        u = np.concatenate([np.random.default_rng([*seed, t]).random(int(cuts[i + 1] - cuts[i]))
                            for i, t in enumerate(range(t0, t1))])
        (apply or self.apply_inserts)(keys, nid, u)
        return int(keys.size)

    def apply_inserts(self, keys: np.ndarray, nid: np.ndarray, u: np.ndarray) -> None:
        """(bucket cell, neuron) pairs sorted by cell into the tables: within a cell the pairs offer in
        order; a neuron that `seen` others were offered before (the cell's count plus its rank) takes
        slot `seen` while the bucket has room, else slot floor(u * (seen + 1)) if that is a slot
        (reservoir sampling; u one uniform draw per pair)."""
        flat = self.tables.reshape(-1, self.reservoir)
        first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        per_key = np.diff(np.r_[first, keys.size])
        rank = np.arange(keys.size) - np.repeat(first, per_key)
        cnt = self.counts.reshape(-1)
        seen = cnt[keys].astype(np.int64) + rank                  # neurons offered before this one
        slot = np.where(seen < self.reservoir, seen, (u * (seen + 1)).astype(np.int64))
        ok = slot < self.reservoir
        flat[keys[ok], slot[ok]] = nid[ok]
        cnt[keys[first]] += per_key.astype(cnt.dtype)   # keys sorted: one add per key

    # ------------------------------------------------------------ active sets
    def select(self, x, labels: sp.csr_matrix | None, active: int, rng: np.random.Generator,
               insert_missed: bool = False, reserve: int = 0, fill: FillTable | None = None) -> np.ndarray:
        """(B, active) int32: labels first, then bucket contents in table order (de-duplicated), then
        uniform random fill; exactly `active` distinct ids per row, in that order. With `insert_missed`,
        labels that the lookup did not retrieve are inserted into the example's probed buckets (BOLT's
        frozen tables). A row with more labels than `active` keeps its first `active` labels.
        `reserve` keeps at least that many slots of each row for the uniform random fill (bucket
        contents are cut at `active - reserve - |labels|`): every neuron then has a chance to be a
        negative for every input (see `runtime/exec/interp.py`: without it dense inference is biased towards
        frequent labels that the buckets rarely return). `fill` (a FillTable, see `training_fill`)
        draws the fill in proportion to the weights instead of uniformly (without replacement: repeated
        draws are dropped; after WEIGHTED_ATTEMPTS rounds the rest is uniform, so a few dominant weights
        cannot stall it)."""
        B, dim = x.shape[0], self.dim
        active = int(min(active, dim))
        buckets = self.hash(x)
        cand = self.tables[np.arange(self.L)[None, :], buckets].reshape(B, -1)    # (B, L*res), table order
        if labels is not None:
            lab = sp.csr_matrix(labels)
            lrows = np.repeat(np.arange(B, dtype=np.int64), np.diff(lab.indptr))
            lids = lab.indices.astype(np.int64)
            lpos = np.arange(lids.size, dtype=np.int64) - np.repeat(lab.indptr[:-1], np.diff(lab.indptr))
            if insert_missed and lids.size:
                ok = cand >= 0
                ckeys = np.repeat(np.arange(B, dtype=np.int64), cand.shape[1])[ok.ravel()] * dim + cand[ok]
                missed = ~_member(lrows * dim + lids, ckeys)
                self.insert(lids[missed], buckets[lrows[missed]], rng)
        else:
            lrows = lids = lpos = np.zeros(0, dtype=np.int64)
            cand = self.rank_by_collisions(cand)
        if reserve > 0:
            cand = self._cut_candidates(cand, lrows, lids, max(0, active - reserve))
        if B * dim <= _CHUNK and fill is None:
            return self._select_dense(cand, lrows, lids, lpos, active, rng)
        return self._select_sorted(cand, lrows, lids, lpos, active, rng, fill)

    def rank_by_collisions(self, cand: np.ndarray) -> np.ndarray:
        """Inference (no labels): each row's distinct candidates, most collisions first (ties: first
        position in table order), padded with -1. Decision beyond BOLT: a neuron found in many of the
        L probed buckets is likelier to be among the top inner products than one found once (the
        collision probability is monotone in similarity), so the cut to `active` keeps those; table
        order alone kept whatever the first tables held. Measured on models/quickstart.bolt: sparse
        P@1 78.2 -> 87.8 (dense 87.6)."""
        B, C = cand.shape
        dim = self.dim
        valid = (cand >= 0).ravel()
        flat_pos = np.flatnonzero(valid)
        keys = (np.repeat(np.arange(B, dtype=np.int64), C) * dim + cand.ravel())[valid]
        uk, first, cnt = np.unique(keys, return_index=True, return_counts=True)
        rows = uk // dim
        order = np.lexsort((flat_pos[first] % C, -cnt, rows))
        rows, ids = rows[order], (uk % dim)[order]
        starts = np.searchsorted(rows, np.arange(B))
        col = np.arange(rows.size) - starts[rows]
        out = np.full((B, C), -1, dtype=cand.dtype)
        out[rows, col] = ids
        return out

    def _cut_candidates(self, cand, lrows, lids, room):
        """Drop bucket candidates past the first `room - |labels_b|` distinct non-label ids of row b."""
        B, dim = cand.shape[0], self.dim
        keys = np.arange(B, dtype=np.int64)[:, None] * dim + cand
        valid = cand >= 0
        first = np.zeros(cand.size, dtype=bool)
        first[np.unique(np.where(valid, keys, -1).ravel(), return_index=True)[1]] = True
        first = first.reshape(cand.shape) & valid & ~_member(keys, lrows * dim + lids)
        allowed = np.maximum(0, room - np.bincount(lrows, minlength=B))
        keep = np.cumsum(first, axis=1) <= allowed[:, None]
        return np.where(keep, cand, -1)

    def _select_dense(self, cand, lrows, lids, lpos, active, rng):
        """Small B * dim: a (B, dim) priority matrix. Priority = label position, else 2^20 + the first
        position in the bucket candidates, else 2^40 + a random key (uniform fill without replacement);
        the `active` smallest per row, sorted by priority."""
        B, dim = cand.shape[0], self.dim
        prio = (np.int64(1) << 40) + rng.integers(0, 1 << 30, size=(B, dim))
        rows = np.repeat(np.arange(B), cand.shape[1])
        pos = np.tile(np.arange(cand.shape[1], dtype=np.int64), B) + (1 << 20)
        flat = cand.ravel()
        ok = flat >= 0
        np.minimum.at(prio, (rows[ok], flat[ok]), pos[ok])     # an id seen twice keeps its first position
        prio[lrows, lids] = lpos                                # label ids are unique within a row
        part = np.argpartition(prio, active - 1, axis=1)[:, :active] if active < dim else \
            np.tile(np.arange(dim), (B, 1))
        order = np.argsort(np.take_along_axis(prio, part, axis=1), axis=1)
        return np.take_along_axis(part, order, axis=1).astype(np.int32)

    def _select_sorted(self, cand, lrows, lids, lpos, active, rng, fill=None):
        """Wide layers (and weighted fills): candidates as (row, id, priority) lists, de-duplicated and
        cut by sorting."""
        B, dim = cand.shape[0], self.dim
        rows_c = np.repeat(np.arange(B, dtype=np.int64), cand.shape[1])
        ids_c = cand.ravel().astype(np.int64)
        prio_c = np.tile(np.arange(cand.shape[1], dtype=np.int64), B) + (1 << 20)
        ok = ids_c >= 0
        rows, ids, prio = _first_k(np.r_[lrows, rows_c[ok]], np.r_[lids, ids_c[ok]],
                                   np.r_[lpos, prio_c[ok]], dim, active)
        for attempt in range(8):                                   # random fill, without duplicates
            need = active - np.bincount(rows, minlength=B)
            if not need.any():
                break
            fr = np.repeat(np.arange(B, dtype=np.int64), need + need // 2 + 2)
            if fill is not None and attempt < WEIGHTED_ATTEMPTS:
                fid = np.searchsorted(fill.cum, rng.integers(0, fill.cum[-1], size=fr.size), side="right")
            else:
                fid = rng.integers(0, dim, size=fr.size)
            fprio = (np.int64(1) << 36) + (attempt << 30) + np.arange(fr.size, dtype=np.int64)
            rows, ids, prio = _first_k(np.r_[rows, fr], np.r_[ids, fid], np.r_[prio, fprio], dim, active)
        need = active - np.bincount(rows, minlength=B)
        if need.any():                                             # dense-ish sets: fill from the complement
            extra_r, extra_i = [], []
            for b in np.flatnonzero(need):
                free = np.setdiff1d(np.arange(dim), ids[rows == b])
                extra_i.append(rng.choice(free, size=need[b], replace=False))
                extra_r.append(np.full(need[b], b, dtype=np.int64))
            rows = np.r_[rows, np.concatenate(extra_r)]
            ids = np.r_[ids, np.concatenate(extra_i)]
            prio = np.r_[prio, np.full(rows.size - prio.size, np.int64(1) << 39)]
            rows, ids, prio = _first_k(rows, ids, prio, dim, active)
        return ids.reshape(B, active).astype(np.int32)

    # ------------------------------------------------------------ persistence (no pickle)
    def meta(self) -> dict:
        return {"family": self.family, "in_dim": self.in_dim, "dim": self.dim, "hashes": self.hashes,
                "range_bits": self.range_bits, "tables": self.L, "reservoir": self.reservoir,
                "seed": self.seed, "bin_size": self.bin_size, "builds": self.builds,
                "frozen": bool(self.frozen)}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"tables": self.tables, "counts": self.counts, "idx": self.idx, "signs": self.signs}
        if self.family == "dwta":
            out["probe"] = self.probe
        return out

    def state_dict(self) -> dict:
        """Nested plain data (JSON scalars + arrays) for a model file; inverse: `from_state`."""
        return {"meta": self.meta(), "arrays": dict(self.arrays())}

    @classmethod
    def from_state(cls, d: dict) -> "LSHIndex":
        return cls.from_arrays(d["meta"], d["arrays"])

    @classmethod
    def from_arrays(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "LSHIndex":
        """Rebuild an index from `meta()` and `arrays()` (as saved in a model file)."""
        obj = cls.__new__(cls)
        obj.family, obj.in_dim, obj.dim = meta["family"], int(meta["in_dim"]), int(meta["dim"])
        obj.hashes, obj.range_bits, obj.L = int(meta["hashes"]), int(meta["range_bits"]), int(meta["tables"])
        obj.reservoir, obj.bin_size = int(meta["reservoir"]), int(meta.get("bin_size", 8))
        obj.seed, obj.builds = int(meta["seed"]), int(meta.get("builds", 0))
        obj.frozen = bool(meta.get("frozen", False))
        obj.tables = np.ascontiguousarray(arrays["tables"], dtype=np.int32)
        obj.counts = np.ascontiguousarray(arrays["counts"], dtype=np.int32)
        obj.idx = np.ascontiguousarray(arrays["idx"], dtype=np.int32)
        obj.signs = np.asarray(arrays.get("signs", np.zeros((0, 0))), dtype=np.float32)
        obj.n_hashes = obj.idx.shape[0]
        if obj.family == "dwta":
            obj.probe = np.ascontiguousarray(arrays["probe"], dtype=np.int32)
        expect = (obj.L, 1 << obj.range_bits, obj.reservoir)
        if obj.tables.shape != expect:
            raise ValueError(f"LSH tables have shape {obj.tables.shape}, expected {expect}")
        return obj


def _first_k(rows, ids, prio, dim, k):
    """De-duplicate (row, id) keeping the lowest priority, then keep the k lowest priorities per row.
    Returns (rows, ids, prio) sorted by (row, prio). Priorities are < 2^40 so (row, prio) packs into one
    int64: one argsort instead of a two-key lexsort."""
    keys = rows * dim + ids
    # callers pass entries in nondecreasing priority order within each (row, id), so a stable sort by
    # key alone keeps the lowest priority first (cheaper than a two-key sort when keys need > 23 bits)
    order = np.argsort(keys, kind="stable")
    keys_s = keys[order]
    first = np.r_[True, keys_s[1:] != keys_s[:-1]] if keys.size else np.zeros(0, dtype=bool)
    sel = order[first]
    rows, ids, prio = rows[sel], ids[sel], prio[sel]
    order = _argsort_pairs(rows, prio)
    rows, ids, prio = rows[order], ids[order], prio[order]
    start = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if rows.size else np.zeros(0, np.int64)
    rank = np.arange(rows.size) - np.repeat(start, np.diff(np.r_[start, rows.size]))
    keep = rank < k
    return rows[keep], ids[keep], prio[keep]


def _member(a: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """np.isin(a, keys) by binary search in the sorted keys: sorts only `keys` (often the short side)."""
    keys = np.sort(keys.ravel())
    if keys.size == 0:
        return np.zeros(a.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(keys, a), keys.size - 1)
    return keys[pos] == a


def _argsort_pairs(major: np.ndarray, minor: np.ndarray) -> np.ndarray:
    """Order by (major, minor) for minor < 2^40: a packed int64 argsort when major < 2^23, else lexsort."""
    if major.size and int(major.max()) >= (1 << 23):
        return np.lexsort((minor, major))
    return np.argsort((major << 40) | minor)


def missed_labels(index, x, labels) -> tuple[np.ndarray, np.ndarray]:
    """(label ids, their buckets (n, L)) of the labels that x's lookup did not retrieve: what
    `LSHIndex.select(insert_missed=True)` inserts, computed without inserting."""
    buckets = index.hash(x)
    cand = index.tables[np.arange(index.L)[None, :], buckets].reshape(buckets.shape[0], -1).astype(np.int64)
    lab = sp.csr_matrix(labels)
    lrows = np.repeat(np.arange(lab.shape[0], dtype=np.int64), np.diff(lab.indptr))
    lids = lab.indices.astype(np.int64)
    crow = np.repeat(np.arange(cand.shape[0], dtype=np.int64), cand.shape[1])
    ok = cand.ravel() >= 0
    missed = ~np.isin(lrows * index.dim + lids, crow[ok] * index.dim + cand.ravel()[ok])
    return lids[missed].astype(np.int32), np.ascontiguousarray(buckets[lrows[missed]])
