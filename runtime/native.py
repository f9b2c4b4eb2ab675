"""NativeExecutor: the Executor contract (CONTRACTS.md section 6) on llvmlite kernels.

Same results as NumpyExecutor (the spec) within float32 reassociation error when fed the same active
sets. Plans that are not chains of `fc` layers with a softmax output (see boltc/lower/rules.py
`native_support`) run on the interpreter: same contract, only slower; `self.fallback_reason` says why.

One training step (the two-layer XC model; every buffer is a numpy array owned here):
  hidden = act(x @ W1 + b1)       sparse_fc_fwd, split by examples
  ids    = LSH select(hidden)     dwta_hash + lookup, split by examples (or `active=` override)
  z      = hidden . W2[ids] + b2  dense_fc_fwd over the active set, split by examples
  loss, dz                        softmax_ce over the active set, split by examples
  dh     = act'(hidden) dz W2[ids] input_grad, split by examples (W2 before its update)
  W2, b2 updated                  invert(ids) then rows_update_out_major split by unique neurons
  W1, b1 updated                  invert(x.indices) then rows_update_in_major split by unique features
Every result is thread-count independent: no kernel writes a row another thread writes.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from boltc.errors import BoltValidationError
from boltc.lower.backward import HYPER
from boltc.lower.rules import SPARSE_INPUT_KINDS, native_support
from boltc.runtime.interp import NumpyExecutor, _SPARSE_INFERENCE_SEED
from boltc.runtime.lsh import training_reserve
from boltc.runtime.native_kernels import compile_plan, ptr
from boltc.runtime.state import check_moments
from boltc.runtime.threads import ThreadPool

# Fixed chunks of the wide layer's unique neurons for the fused update + input gradient: each chunk has
# its own input-gradient buffer (B x in_dim, small), summed in chunk order afterwards. The chunking does
# not depend on the thread count, so neither does the result.
N_CHUNKS = 8
# Below this batch size the active-set forward gathers per example (no inversion: batch-1 latency);
# above it, it runs in neuron order (each weight row read once, in address order).
NEURON_MAJOR_MIN_BATCH = 32
# Dense scoring of an output layer at least this big (dim * in_dim) for a batch >= 32 goes to BLAS.
DENSE_GEMM_MIN_WEIGHTS = 1 << 22


def _act_grad(activation: str, act: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Same formulas as boltc/lower/backward.py act_grad (and the spec's activation_backward)."""
    if activation == "relu":
        return d * (act > 0)
    if activation == "sigmoid":
        return d * (act * (1 - act))
    if activation == "tanh":
        return d * (1 - act * act)
    return d


def _csr(x) -> sp.csr_matrix:
    """CSR with the dtypes the kernels read (int64 indptr, int32 indices, float32 data), contiguous."""
    if not sp.issparse(x):
        x = sp.csr_matrix(np.asarray(x, dtype=np.float32))
    if (x.format == "csr" and x.indptr.dtype == np.int64 and x.indices.dtype == np.int32
            and x.data.dtype == np.float32 and x.indptr.flags.c_contiguous
            and x.indices.flags.c_contiguous and x.data.flags.c_contiguous):
        return x                               # already what the kernels read (runtime/dataset.as_csr)
    x = sp.csr_matrix(x)
    for attr, dt in (("indptr", np.int64), ("indices", np.int32), ("data", np.float32)):
        setattr(x, attr, np.ascontiguousarray(getattr(x, attr), dtype=dt))
    return x


_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _softmax_rows(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class NativeExecutor:
    def __init__(self, plan: dict, state, threads: int = 0, kernels=None):
        self.plan, self.state = plan, state
        self.interp = NumpyExecutor(plan, state, threads=threads)     # fallback, upkeep, validation
        self.upkeep = self.interp.upkeep
        self.layers = plan["layers"]
        self.output = plan["output"]
        self.seed = self.interp.seed
        self.fallback_reason = native_support(plan)
        self.native = self.fallback_reason is None
        self.pool = ThreadPool(threads)
        self.threads = self.pool.threads
        if not self.native:
            return
        check_moments(plan, state)     # the update kernels write moments in the plan's dtype (f32 / bf16)
        self.k = kernels or compile_plan(plan)
        self.inputs = {i["name"]: i for i in plan["inputs"]}
        self.first_sparse = self.inputs[self.layers[0]["inputs"][0]]["kind"] in SPARSE_INPUT_KINDS
        # the per-thread row accumulator of the weight updates: one weight row wide
        widest = max(l["dim"] if (i == 0 and self.first_sparse) else l["in_dim"]
                     for i, l in enumerate(self.layers))
        self.scratch = [np.zeros(widest, np.float32) for _ in range(self.threads)]
        self._counts = {}          # per inverted dimension: zeroed int32 counts + int64 offsets
        self._marks = None
        self._ranked_scratch = None
        self._hash_scratch = {}
        self._install_native_hash()

    @property
    def upkeep_seconds(self) -> float:
        return self.upkeep.seconds

    def after_step(self, epoch: int, batch_index: int, batches_per_epoch: int) -> None:
        self.upkeep.after_step(epoch, batch_index, batches_per_epoch)

    # ------------------------------------------------------------ hashing and active sets
    def _install_native_hash(self) -> None:
        """DWTA indexes hash dense rows with the native kernel (also during table rebuilds, which hash
        every neuron's weight row: the dominant upkeep cost). Codes are identical to the NumPy ones."""
        out = next(l for l in self.layers if l["name"] == self.output)
        self._hash_layer = out if (out.get("hash") or {}).get("family") == "dwta" and self.k.has(
            out["name"], "hash") else None
        index = self.state.lsh.get(self.output) if self._hash_layer else None
        if index is None or getattr(index, "_native_hash", False):
            return
        spec_hash = index.hash
        kernels = self.k           # the closure keeps the native library alive as long as the index

        def native_hash(x, _index=index, _spec=spec_hash, _k=kernels):
            if sp.issparse(x) or _index.family != "dwta":
                return _spec(x)
            return self._dwta(_k.fn(self.output, "hash"), _index, np.ascontiguousarray(x, dtype=np.float32))

        def native_build(w_out_major, _index=index, _k=kernels):
            self._build_tables(_k.fn(self.output, "build"), _index, w_out_major)

        index.hash = native_hash
        index.build = native_build
        index._native_hash = True

    def _build_tables(self, fn, index, w: np.ndarray, chunk: int = 1 << 16) -> None:
        """Refill every table from the neurons' weight rows: native hashing in chunks of neurons (bounded
        memory), then reservoir insertion split by tables (see boltc/lower/select.py build_tables)."""
        index.builds += 1
        seed = (index.seed * 1000003 + index.builds) & ((1 << 63) - 1)
        L = index.L
        for n0 in range(0, w.shape[0], chunk):
            part = np.ascontiguousarray(w[n0:n0 + chunk], dtype=np.float32)
            buckets = index.hash(part)
            self.pool.run(fn, L, ptr(buckets), n0, part.shape[0], ptr(index.tables), ptr(index.counts),
                          seed, int(n0 == 0))

    def _dwta(self, fn, index, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        out = np.empty((n, index.L), np.int32)
        idx = np.ascontiguousarray(index.idx, np.int32)
        probe = np.ascontiguousarray(index.probe, np.int32)
        key = ("hash", index.n_hashes)
        scratch = self._hash_scratch.get(key)
        if scratch is None:
            scratch = self._hash_scratch[key] = [np.empty(4 * index.n_hashes, np.int32)
                                                 for _ in range(self.threads)]
        self.pool.run(fn, n, ptr(x), ptr(idx), ptr(probe), ptr(out),
                      per_thread=[ptr(s) for s in scratch], min_per_thread=1)
        return out

    def _select(self, layer, h: np.ndarray, labels, rng_seed: int, insert_missed: bool) -> np.ndarray:
        index = self.state.lsh[layer["name"]]
        reserve = training_reserve(layer) if labels is not None else 0
        fill = self.upkeep.fill(layer) if labels is not None else None
        if self._hash_layer is None or layer["name"] != self.output or index.family != "dwta":
            rng = np.random.default_rng(rng_seed)
            return index.select(h, labels, layer["active"], rng, insert_missed=insert_missed, reserve=reserve,
                                fill=fill)
        B, K, dim = h.shape[0], layer["active"], layer["dim"]
        buckets = index.hash(h)
        if self._marks is None:                # per-thread bitsets, zero between calls
            self._marks = [np.zeros(dim // 32 + 1, np.int32) for _ in range(self.threads)]
        out = np.empty((B, K), np.int32)
        lab = _csr(labels) if labels is not None else None
        tables = index.tables
        if lab is None and self.k.has(layer["name"], "lookup_ranked"):
            return self._lookup_ranked(layer, index, buckets, out, rng_seed)
        self.pool.run(self.k.fn(layer["name"], "lookup"), B, ptr(buckets), ptr(tables), index.L,
                      tables.shape[1], index.reservoir, ptr(lab.indptr) if lab is not None else None,
                      ptr(lab.indices) if lab is not None else None, int(lab is not None),
                      int(rng_seed) & ((1 << 63) - 1), max(0, K - reserve),
                      ptr(fill.cum) if fill else None, ptr(fill.guide) if fill else None,
                      0 if fill is None else fill.cum.size, ptr(out), per_thread=[ptr(m) for m in self._marks])
        if insert_missed and lab is not None and lab.nnz:
            self._insert_missed(index, buckets, lab, np.random.default_rng(rng_seed))
        return out

    def _lookup_ranked(self, layer, index, buckets, out, rng_seed: int) -> np.ndarray:
        """Inference: candidates ranked by collisions across the tables (LSHIndex.rank_by_collisions)."""
        dim, cap = layer["dim"], index.L * index.reservoir
        scr = self._ranked_scratch
        if scr is None or scr[0][0].size < dim or scr[0][1].size < cap:
            scr = self._ranked_scratch = [(np.zeros(dim, np.uint8), np.empty(cap, np.int32),
                                           np.empty(256, np.int64)) for _ in range(self.threads)]
        self.pool.run(self.k.fn(layer["name"], "lookup_ranked"), buckets.shape[0], ptr(buckets),
                      ptr(index.tables), index.L, index.tables.shape[1], index.reservoir,
                      int(rng_seed) & ((1 << 63) - 1), ptr(out),
                      per_thread=[(ptr(c), ptr(t), ptr(h)) for c, t, h in scr])
        return out

    @staticmethod
    def _insert_missed(index, buckets, lab, rng) -> None:
        """Frozen tables: labels a lookup did not retrieve go into the probed buckets (as the spec)."""
        B = buckets.shape[0]
        cand = index.tables[np.arange(index.L)[None, :], buckets].reshape(B, -1)
        lrows = np.repeat(np.arange(B, dtype=np.int64), np.diff(lab.indptr))
        lids = lab.indices.astype(np.int64)
        hit = (cand[lrows] == lids[:, None]).any(axis=1)
        if (~hit).any():
            index.insert(lids[~hit], buckets[lrows[~hit]], rng)

    # ------------------------------------------------------------ forward
    def _forward(self, batch, mode: str, active: dict | None, rng_seed: int, insert_missed=False):
        if mode not in ("train", "dense", "sparse"):
            raise ValueError(f"mode must be 'train', 'dense' or 'sparse', not {mode!r}")
        values = dict(batch.inputs)
        x = values[self.layers[0]["inputs"][0]]
        B = x.shape[0]
        acts, ids, z = [], None, None
        cur = _csr(x) if self.first_sparse else np.ascontiguousarray(x, dtype=np.float32)
        xin = cur
        for i, layer in enumerate(self.layers):
            name, p = layer["name"], self.state.params[layer["name"]]
            W, b = p["W"], p.get("b")
            is_out = name == self.output
            if i == 0 and self.first_sparse:
                out = np.empty((B, layer["dim"]), np.float32)
                self.pool.run(self.k.fn(name, "fwd"), B, ptr(cur.indptr), ptr(cur.indices), ptr(cur.data),
                              ptr(W), ptr(b), ptr(out))
            elif not is_out:
                out = np.empty((B, layer["dim"]), np.float32)
                self.pool.run(self.k.fn(name, "fwd"), B, ptr(cur), None, ptr(W), ptr(b), ptr(out))
            else:
                if active and name in active:
                    ids = np.ascontiguousarray(active[name], dtype=np.int32)
                elif layer.get("hash") and mode != "dense" and name in self.state.lsh:
                    labels = batch.labels if mode == "train" else None
                    ids = self._select(layer, cur, labels, rng_seed, insert_missed and getattr(
                        self.state.lsh[name], "frozen", False))
                self._inv = None
                if ids is not None and ids.shape[1] == layer["active"] and self.k.has(name, "fwd_active"):
                    out = np.empty(ids.shape, np.float32)
                    if B >= NEURON_MAJOR_MIN_BATCH:
                        self._inv = inv = self._invert(ids, layer["dim"])
                        self.pool.run(self.k.fn(name, "fwd_neuron"), inv[3], ptr(inv[0]), ptr(inv[1]),
                                      ptr(inv[2]), ptr(cur), ptr(W), ptr(b), ptr(out))
                    else:
                        self.pool.run(self.k.fn(name, "fwd_active"), B, ptr(cur), ptr(ids), ptr(W), ptr(b),
                                      ptr(out))
                elif ids is not None:
                    raise BoltValidationError(
                        f"layer {name!r}: active sets must hold {layer['active']} ids per example")
                elif B >= NEURON_MAJOR_MIN_BATCH and layer["dim"] * layer["in_dim"] >= DENSE_GEMM_MIN_WEIGHTS:
                    # dense scoring of a wide layer for a batch is a real GEMM (B x in @ in x dim): the
                    # host BLAS sgemm (numpy's) runs it near FLOP peak, which a dot-product kernel does
                    # not (measured 4.7 s vs ~1 s for 256 x 670k); its result does not depend on our pool
                    out = np.matmul(cur, W.T)
                    if b is not None:
                        out += b
                else:
                    out = np.empty((B, layer["dim"]), np.float32)
                    self.pool.run(self.k.fn(name, "fwd"), B, ptr(cur), None, ptr(W), ptr(b), ptr(out))
                z = out
            if not is_out:
                values[name] = out
                acts.append(out)
                cur = out
        return values, xin, acts, ids, z

    def forward(self, batch, mode: str = "dense", active: dict | None = None) -> dict:
        if not self.native:
            return self.interp.forward(batch, mode, active)
        seed = self._seed(mode)
        values, _, _, ids, z = self._forward(batch, mode, active, seed)
        act = _softmax_rows(z)
        values[self.output] = (ids, act) if ids is not None else act
        return values

    def _seed(self, mode: str) -> int:
        """63-bit seed of the native random fill: a splitmix64 hash of (train seed, step, mode), so a
        resumed run draws what the uninterrupted one drew, and sparse inference is reproducible.
        (Plain integer arithmetic: numpy's SeedSequence costs 0.2 ms, half a batch-1 inference.)"""
        parts = ((self.seed, _SPARSE_INFERENCE_SEED) if mode == "sparse"
                 else (self.seed, self.state.step, 0xF0 if mode != "train" else 0))
        h = 0
        for p in parts:
            h = _splitmix64((h ^ (int(p) & _M64)) & _M64)
        return h >> 1

    # ------------------------------------------------------------ training
    def _hyper(self, lr: float) -> np.ndarray:
        t = self.plan.get("train", {})
        b1, b2 = float(t.get("beta1", 0.9)), float(t.get("beta2", 0.999))
        step = max(1, self.state.step)
        vals = {"lr": lr, "beta1": b1, "beta2": b2, "eps": float(t.get("eps", 1e-7)),
                "bc1": 1 - b1 ** step, "bc2": 1 - b2 ** step, "momentum": float(t.get("momentum", 0.0))}
        return np.array([vals[h] for h in HYPER], np.float32)

    def _invert(self, ids: np.ndarray, dim: int):
        """Neuron -> positions (serial counting sort; a few ms even at 670k)."""
        flat = np.ascontiguousarray(ids.reshape(-1), dtype=np.int32)
        n = flat.size
        if dim not in self._counts:
            self._counts[dim] = (np.zeros(dim, np.int32), np.empty(dim, np.int64))
        counts, offs = self._counts[dim]
        uniq = np.empty(max(n, 1), np.int32)
        seg = np.empty(n + 1, np.int64)
        pos = np.empty(max(n, 1), np.int32)
        nu = np.zeros(1, np.int64)
        fn = self._invert_fn(dim)
        fn(ptr(flat), n, ptr(counts), ptr(offs), ptr(uniq), ptr(seg), ptr(pos), ptr(nu))
        return uniq, seg, pos, int(nu[0])

    def _invert_fn(self, dim):
        for layer in self.layers:
            if self.k.has(layer["name"], "invert"):
                d = layer["in_dim"] if layer is self.layers[0] and self.first_sparse else layer["dim"]
                if d == dim:
                    return self.k.fn(layer["name"], "invert")
        raise KeyError(dim)

    def train_step(self, batch, lr: float, active: dict | None = None) -> np.ndarray:
        if not self.native:
            return self.interp.train_step(batch, lr, active)
        if batch.labels is None:
            raise BoltValidationError("training needs labels")
        values, xin, acts, ids, z = self._forward(batch, "train", active, self._seed("train"),
                                                  insert_missed=True)
        B = z.shape[0]
        out_layer = self.layers[-1]
        name = out_layer["name"]
        lab = _csr(batch.labels)
        w = np.ones(B, np.float32) if batch.weights is None else np.asarray(batch.weights, np.float32)
        scale = np.ascontiguousarray(w / np.float32(B), dtype=np.float32)
        loss = np.empty(B, np.float32)
        grad = np.empty_like(z)
        sparse_out = ids is not None
        ce_ids = ids if sparse_out else np.ascontiguousarray(
            np.broadcast_to(np.arange(out_layer["dim"], dtype=np.int32), z.shape))
        self.pool.run(self.k.fn(name, "ce" if sparse_out else "ce_all"), B, ptr(z), ptr(ce_ids),
                      ptr(lab.indptr), ptr(lab.indices), ptr(scale), ptr(loss), ptr(grad))
        self.state.step += 1
        hyper = self._hyper(lr)
        scr = [ptr(s) for s in self.scratch]
        # backward, last layer first; each layer's input gradient is taken before its weights move
        g = grad
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            lname = layer["name"]
            p, m, v = self.state.params[lname], self.state.m[lname], self.state.v[lname]
            W, b = p["W"], p.get("b")
            mb, vb = (m.get("b"), v.get("b")) if b is not None else (None, None)
            if i == 0 and self.first_sparse:
                self._update_sparse_input(layer, xin, g, hyper, scr)
                continue
            x_in = acts[i - 1] if i > 0 else xin
            dx = None
            if i > 0 and i == len(self.layers) - 1 and sparse_out:
                uniq, seg, pos, nu = self._inv if self._inv is not None else self._invert(ids, layer["dim"])
                bounds = [(c * nu // N_CHUNKS, (c + 1) * nu // N_CHUNKS) for c in range(N_CHUNKS)]
                dxbufs = np.zeros((N_CHUNKS,) + x_in.shape, np.float32)
                scratch = [np.empty(layer["in_dim"], np.float32) for _ in range(N_CHUNKS)]
                self.pool.run_chunks(self.k.fn(lname, "upd_active_dx"), bounds, ptr(uniq), ptr(seg), ptr(pos),
                                     B, ptr(g), ptr(x_in), ptr(W), ptr(b), ptr(m["W"]), ptr(v["W"]), ptr(mb),
                                     ptr(vb), ptr(hyper),
                                     per_chunk=[(ptr(scratch[c]), ptr(dxbufs[c])) for c in range(N_CHUNKS)])
                dx = dxbufs[0]
                for c in range(1, N_CHUNKS):           # fixed order: thread-count independent
                    dx += dxbufs[c]
                g = np.ascontiguousarray(_act_grad(self.layers[i - 1]["activation"], x_in, dx), np.float32)
                continue
            if i > 0:
                dx = np.empty_like(x_in)
                role, gids = ("dx_active", ids) if (i == len(self.layers) - 1 and sparse_out) else ("dx", None)
                self.pool.run(self.k.fn(lname, role), B, ptr(g), ptr(gids), ptr(W), ptr(x_in), ptr(dx))
            if i == len(self.layers) - 1 and sparse_out:
                uniq, seg, pos, nu = self._invert(ids, layer["dim"])
                self.pool.run(self.k.fn(lname, "upd_active"), nu, ptr(uniq), ptr(seg), ptr(pos), B, ptr(g),
                              ptr(x_in), ptr(W), ptr(b), ptr(m["W"]), ptr(v["W"]), ptr(mb), ptr(vb),
                              ptr(hyper), per_thread=scr)
            else:
                self.pool.run(self.k.fn(lname, "upd"), layer["dim"], None, None, None, B, ptr(g),
                              ptr(x_in), ptr(W), ptr(b), ptr(m["W"]), ptr(v["W"]), ptr(mb), ptr(vb),
                              ptr(hyper), per_thread=scr)
            g = dx
        counts = self.state.params[self.output].get("label_count")
        if counts is not None:
            counts += np.bincount(lab.indices, minlength=counts.size).astype(np.float32)
        return loss

    def _update_sparse_input(self, layer, x: sp.csr_matrix, dz: np.ndarray, hyper, scr) -> None:
        lname = layer["name"]
        p, m, v = self.state.params[lname], self.state.m[lname], self.state.v[lname]
        B = x.shape[0]
        uniq, seg, pos, nu = self._invert(x.indices, layer["in_dim"])
        prow = np.repeat(np.arange(B, dtype=np.int32), np.diff(x.indptr))
        self.pool.run(self.k.fn(lname, "upd"), nu, ptr(uniq), ptr(seg), ptr(pos), ptr(prow), ptr(x.data),
                      ptr(dz), ptr(p["W"]), ptr(m["W"]), ptr(v["W"]), ptr(hyper), per_thread=scr)
        if p.get("b") is not None:
            db = np.ascontiguousarray(dz.sum(axis=0, dtype=np.float32))
            self.pool.run(self.k.fn(lname, "bias_upd"), layer["dim"], ptr(p["b"]), ptr(db), ptr(m["b"]),
                          ptr(v["b"]), ptr(hyper))

    # ------------------------------------------------------------ inference
    def predict(self, batch, top_k: int, sparse: bool = False):
        if not self.native:
            return self.interp.predict(batch, top_k, sparse)
        mode = "sparse" if sparse else "dense"
        _, _, _, ids, z = self._forward(batch, mode, None, self._seed(mode))
        B, n = z.shape
        counts = self.state.params[self.output].get("label_count")
        use_mask = counts is not None and bool(counts.any())
        k = int(top_k)
        out_ids = np.empty((B, k), np.int32)
        out_sc = np.empty((B, k), np.float32)
        role = "topk" if ids is not None else "topk_all"
        self.pool.run(self.k.fn(self.output, role), B, ptr(z), ptr(ids),
                      ptr(counts) if use_mask else None, int(use_mask), k, ptr(out_ids), ptr(out_sc))
        # scores as the spec reports them: softmax probabilities over the row (masking happens after)
        lse = np.empty((B, 1), np.float32)
        self.pool.run(self.k.fn(self.output, "lse" if ids is not None else "lse_all"), B, ptr(z), ptr(lse))
        with np.errstate(invalid="ignore"):
            probs = np.where(out_ids >= 0, np.exp(out_sc - lse), -np.inf).astype(np.float32)
        return out_ids, probs
