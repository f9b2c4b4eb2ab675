"""NativeExecutor: the Executor contract (CONTRACTS.md section 6) on llvmlite kernels.

Same results as NumpyExecutor (the spec) within float32 reassociation error when fed the same active
sets. It runs any plan that boltc/lower/rules.py lowers (`native_support(plan)` is None): a DAG of
layers of any op (boltc/ops/) with a softmax + cross-entropy or sigmoid + binary
cross-entropy output, dense or LSH-sparse, and LSH-sparse hidden layers. Other plans (a hidden
softmax, a sparse fc reading a sparse input directly) run on the interpreter: same contract, only
slower; `self.fallback_reason` says why.

One training step walks the plan like the interpreter: layers in plan order (runtime/exec/native_ops.py
NATIVE_OPS[op].forward, values by name), the fused loss kernel of the output, then the layers in
reverse order (NATIVE_OPS[op].backward), each layer's input gradients summed into their producers in
that fixed order. For the two-layer XC model:
  hidden = act(x @ W1 + b1)       sparse_fc_fwd, split by examples
  ids    = LSH select(hidden)     dwta_hash + lookup, split by examples (or `active=` override)
  z      = hidden . W2[ids] + b2  dense_fc_fwd over the active set, split by examples
  loss, dz                        softmax_ce over the active set, split by examples
  dh     = act'(hidden) dz W2[ids] fused into W2's update (W2 read before it moves), fixed chunks
  W2, b2 updated                  invert(ids) then rows_update_out_major split by unique neurons
  W1, b1 updated                  invert(x.indices) then rows_update_in_major split by unique features
Every result is thread-count independent: no kernel writes a row another thread writes.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from boltc.errors import BoltValidationError
from boltc.lower.backward import HYPER
from boltc.lower.kernels import compile_plan, compile_split, ptr
from boltc.lower.loss import LOSS_ROLE
from boltc.lower.select import DWTA_LANES, dwta_scratch_words
from boltc.lower.rules import SPARSE_INPUT_KINDS, fused_input_activation, native_support
from boltc.ops import OPS
from boltc.ops.base import mix_seed, step_seed
from boltc.ops.runners import grad_buffer
from boltc.runtime.exec import blas, native_ops
from boltc.runtime.exec.interp import NumpyExecutor
from boltc.runtime.exec.native_ops import (ADAM_OPS, DENSE_GEMM_MIN_WEIGHTS, N_CHUNKS, NATIVE_OPS,  # noqa: F401
                                           NEURON_MAJOR_MIN_BATCH, Step, min_items)
from boltc.runtime.exec.numpy_rules import activate
from boltc.runtime.exec.state import check_moments
from boltc.runtime.exec.gradients import RowGrad, one_part
from boltc.runtime.exec.threads import ThreadPool
from boltc.runtime.lsh.index import training_reserve

# factor kinds -> (merge, apply): the ops' rules for handing out a weight gradient's factors
FACTOR_KINDS = {kind: fns for op in OPS.values() for kind, fns in op.extra.get("factor_kinds", {}).items()}


def merge_factors(per_worker: list[dict]) -> dict:
    """Every worker's factors (layer -> factor dict), stacked in worker order, layer by layer."""
    if len(per_worker) == 1:
        return per_worker[0]
    return {name: FACTOR_KINDS[f["kind"]][0]([w[name] for w in per_worker]) for name, f in per_worker[0].items()}


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


class NativeExecutor:
    def __init__(self, plan: dict, state, threads: int = 0, kernels=None, sharded_moments: bool = False):
        self.plan, self.state = plan, state
        # a data-parallel worker holding only its share of the moments (ZeRO-1) computes gradients and
        # applies them to its own rows; the fused train_step (which writes every touched row's moments)
        # is then refused
        self.sharded_moments = sharded_moments
        self.stream = 0            # mixed into the random-fill seed when nonzero (a worker's rank)
        self.missed = None         # a dict: frozen tables' missed labels are collected, not inserted
        self._split = None
        # gradients() and apply_parts(copy_out) write into buffers kept between calls (native_ops.grad_buffer)
        self.reuse_grad_buffers, self.grad_buffers = False, {}
        self.divided_hashing = None
        # data-parallel workers sharing one copy of the tables: (name, index) -> (t0, t1, done) the tables
        # this worker refills (done: wait until every worker has refilled its own), or None (all tables)
        self.divided_tables = None
        self.interp = NumpyExecutor(plan, state, threads=threads)     # fallback, upkeep, validation
        self.upkeep = self.interp.upkeep
        self.layers = plan["layers"]
        self.by_name = {l["name"]: l for l in self.layers}
        self.output = plan["output"]
        self.seed = self.interp.seed
        self.fallback_reason = native_support(plan)
        self.native = self.fallback_reason is None
        self.pool = ThreadPool(threads)
        self.blas = blas                 # sgemm over the pool, for the ops' runners (runtime/exec/blas.py)
        self.threads = self.pool.threads
        if not self.native:
            return
        if not sharded_moments:
            check_moments(plan, state)     # the update kernels write moments in the plan's dtype (f32 / bf16)
        self.k = kernels or compile_plan(plan)
        self.inputs = {i["name"]: i for i in plan["inputs"]}
        self.loss_role = LOSS_ROLE[plan["loss"]]
        # activation derivatives applied by a reader's input-gradient kernel (see rules.py), and the
        # producers whose gradient therefore arrives as the gradient of their pre-activation
        self.fused_activation = {l["name"]: fused_input_activation(plan, l) for l in self.layers}
        self.pre_activation_grads = {l["inputs"][0] for l in self.layers if self.fused_activation[l["name"]]}
        # the per-thread row accumulator of the weight updates: one weight row wide
        widest = max([l["dim"] if l.get("layout") == "in_major" else l["in_dim"]
                      for l in self.layers if l["op"] in ("fc", "embedding")] + [1])
        self.scratch = [np.zeros(widest, np.float32) for _ in range(self.threads)]
        self.scratch_ptrs = [ptr(s) for s in self.scratch]
        self._counts = {}          # per inverted dimension: zeroed int32 counts + int64 offsets
        self._inversions = {}      # (invert kernel, ids) -> its output buffers (see invert)
        self._step_buffers = {}    # buffers of a training step that no caller keeps, by shape
        self._inv = None           # the output's last inversion (benchmarks/train_throughput.py reads it)
        self._marks = {}
        self._ranked_scratch = None
        self._hash_scratch = {}
        self.kernel_scratch = {}   # scratch an op's runner keeps between steps (boltc/ops/fc.py _blocked_scratch)
        self._install_native_hash()

    @property
    def upkeep_seconds(self) -> float:
        return self.upkeep.seconds

    def after_step(self, epoch: int, batch_index: int, batches_per_epoch: int) -> None:
        self.upkeep.after_step(epoch, batch_index, batches_per_epoch)

    # ------------------------------------------------------------ hashing and active sets
    def _install_native_hash(self) -> None:
        """Every LSH index of the plan refills its tables with the native kernel (reservoir insertion
        split by tables), and hashes dense rows with the native kernel (also during those rebuilds,
        which hash every neuron's weight row: the dominant upkeep cost); codes are identical to the
        NumPy ones for both families (a model file from before the SRP kernel keeps the spec's hash)."""
        kernels = self.k           # the closures keep the native library alive as long as the index
        for name, index in self.state.lsh.items():
            if name not in self.by_name or not self.k.has(name, "build") or getattr(index, "_native_hash", False):
                continue
            if self.k.has(name, "hash"):
                def native_hash(x, _index=index, _spec=index.hash, _k=kernels, _name=name):
                    if sp.issparse(x):
                        return _spec(x)
                    kernel = self._dwta if _index.family == "dwta" else self._srp
                    return kernel(_k.fn(_name, "hash"), _index, np.ascontiguousarray(x, dtype=np.float32))
                index.hash = native_hash

            def native_build(w_out_major, _index=index, _k=kernels, _name=name):
                self._build_tables(_k.fn(_name, "build"), _index, w_out_major, _name)

            index.build = native_build
            index._native_hash = True

    def _build_tables(self, fn, index, w: np.ndarray, name: str = "", chunk: int = 1 << 16) -> None:
        """Refill every table from the neurons' weight rows: native hashing in chunks of neurons (bounded
        memory), then reservoir insertion split by tables (see boltc/lower/select.py build_tables).
        `divided_hashing(name, index, w)`, when set (data-parallel workers on one machine), returns
        every neuron's codes, hashed a share per worker (runtime/distributed/worker.py hash_share)."""
        index.builds += 1
        seed = (index.seed * 1000003 + index.builds) & ((1 << 63) - 1)
        L = index.L
        codes = self.divided_hashing(name, index, w) if self.divided_hashing is not None else None
        share = self.divided_tables(name, index) if self.divided_tables is not None else None
        t0, t1, done = share or (0, L, None)
        # the kernel fills tables [t0, t1) (each table on its own: any share gives the same tables)
        fill = fn if t0 == 0 else (lambda lo, hi, *a: fn(t0 + lo, t0 + hi, *a))
        for n0 in range(0, w.shape[0], chunk):
            n1 = min(w.shape[0], n0 + chunk)
            buckets = codes[n0:n1] if codes is not None else index.hash(np.ascontiguousarray(w[n0:n1], dtype=np.float32))
            if t1 > t0:
                self.pool.run(fill, t1 - t0, ptr(buckets), n0, n1 - n0, ptr(index.tables), ptr(index.counts),
                              seed, int(n0 == 0))
        if done is not None:
            done()

    def _dwta(self, fn, index, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        out = np.empty((n, index.L), np.int32)
        # the kernel reads x transposed, DWTA_LANES examples per vector, past the last row by up to
        # DWTA_LANES columns (zeros here; boltc/lower/select.py dwta_hash)
        key = ("xT", x.shape)
        xT = self._hash_scratch.get(key)
        if xT is None:
            xT = np.zeros((x.shape[1], n + DWTA_LANES), np.float32)
            if x.size <= 1 << 20:      # a batch's (kept per shape); a table rebuild's chunk is not kept
                if len(self._hash_scratch) > 64:       # many batch shapes (inference): keep it bounded
                    self._hash_scratch = {k: v for k, v in self._hash_scratch.items() if k[0] != "xT"}
                self._hash_scratch[key] = xT
        xT[:, :n] = x.T
        idx = self._transposed_idx(index)
        probe = np.ascontiguousarray(index.probe, np.int32)
        key = ("hash", index.n_hashes)
        scratch = self._hash_scratch.get(key)
        if scratch is None:
            scratch = self._hash_scratch[key] = [np.empty(dwta_scratch_words(index.n_hashes), np.int32)
                                                 for _ in range(self.threads)]
        self.pool.run(fn, n, ptr(xT), xT.shape[1], ptr(idx), ptr(probe), ptr(out),
                      per_thread=[ptr(s) for s in scratch], min_per_thread=min_items(4 * idx.size))
        return out

    def _srp(self, fn, index, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        out = np.empty((n, index.L), np.int32)
        idx, signs = self._transposed_idx(index), self._transposed(index, "signs")
        cached = self._hash_scratch.get(("neg", id(index)))
        if cached is None or cached[0] is not signs:       # 1 where the sign is -1, as bytes (the kernel's)
            cached = self._hash_scratch[("neg", id(index))] = (signs, (signs < 0).astype(np.uint8))
        neg = cached[1]
        key = ("srp", index.n_hashes)
        scratch = self._hash_scratch.get(key)
        if scratch is None:
            scratch = self._hash_scratch[key] = [np.empty(index.n_hashes, np.float32) for _ in range(self.threads)]
        self.pool.run(fn, n, ptr(x), ptr(idx), ptr(neg), idx.shape[0], int(index.full_width()), ptr(out),
                      per_thread=[ptr(s) for s in scratch], min_per_thread=min_items(idx.size))
        return out

    def marks(self, dim: int) -> list:
        """Per-thread bitsets of dim bits (the lookup's de-duplication, the loss kernels' label test);
        every kernel leaves them zero."""
        marks = self._marks.get(dim)
        if marks is None:
            marks = self._marks[dim] = [np.zeros(dim // 32 + 1, np.int32) for _ in range(self.threads)]
        return marks

    def _transposed_idx(self, index) -> np.ndarray:
        """index.idx as the hash kernels read it, (bin_size or width, n_hashes)."""
        return self._transposed(index, "idx")

    def _transposed(self, index, attr: str) -> np.ndarray:
        """index.<attr> transposed and contiguous, kept until a rehash replaces the array."""
        cached = self._hash_scratch.get((attr, id(index)))
        a = getattr(index, attr)
        if cached is None or cached[0] is not a:
            cached = self._hash_scratch[(attr, id(index))] = (a, np.ascontiguousarray(a.T))
        return cached[1]

    def select(self, layer, h: np.ndarray, labels, rng_seed: int, insert_missed: bool) -> np.ndarray:
        index = self.state.lsh[layer["name"]]
        reserve = training_reserve(layer) if labels is not None else 0
        fill = self.upkeep.fill(layer) if labels is not None else None
        # the lookup is native for either family (buckets from the native DWTA kernel, or from the
        # spec's SRP hash: a small matrix product)
        if not self.k.has(layer["name"], "lookup"):
            rng = np.random.default_rng(rng_seed)
            ids = index.select(h, labels, layer["active"], rng, insert_missed=insert_missed, reserve=reserve,
                               fill=fill)
            return ids if labels is not None else self._inference_fill(layer, index, index.hash(h), ids)
        B, K, dim = h.shape[0], layer["active"], layer["dim"]
        buckets = index.hash(h)
        marks = self.marks(dim)
        out = np.empty((B, K), np.int32)
        lab = _csr(labels) if labels is not None else None
        tables = index.tables
        if lab is None and self.k.has(layer["name"], "lookup_ranked"):
            out = self._lookup_ranked(layer, index, buckets, out, rng_seed)
            return self._inference_fill(layer, index, buckets, out)
        self.pool.run(self.k.fn(layer["name"], "lookup"), B, ptr(buckets), ptr(tables), index.L,
                      tables.shape[1], index.reservoir, ptr(lab.indptr) if lab is not None else None,
                      ptr(lab.indices) if lab is not None else None, int(lab is not None),
                      int(rng_seed) & ((1 << 63) - 1), max(0, K - reserve),
                      ptr(fill.cum) if fill else None, ptr(fill.guide) if fill else None,
                      0 if fill is None else fill.cum.size, ptr(out), per_thread=[ptr(m) for m in marks],
                      min_per_thread=min_items(index.L * index.reservoir + 4 * K))
        if insert_missed and lab is not None and lab.nnz:
            if self.missed is not None:
                self.missed[layer["name"]] = self._missed_labels(index, buckets, lab, layer["name"])
            else:
                self._insert_missed(index, buckets, lab, np.random.default_rng(rng_seed), layer["name"])
        return out if lab is not None else self._inference_fill(layer, index, buckets, out)

    def _inference_fill(self, layer, index, buckets, out):
        """The output's sparse inference fill: the interpreter's rule (runtime/lsh/prior.py)."""
        if layer["name"] != self.output:
            return out
        return self.interp.inference_fill(layer, index, buckets, out)

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
                      per_thread=[(ptr(c), ptr(t), ptr(h)) for c, t, h in scr],
                      min_per_thread=min_items(4 * cap + 4 * layer["active"]))
        return out

    def _missed_labels(self, index, buckets, lab, name: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(label ids, their buckets) of the labels a frozen table's lookup did not retrieve: those in
        none of their row's probed buckets (the `label_hits` kernel, split by examples)."""
        lrows = np.repeat(np.arange(buckets.shape[0], dtype=np.int64), np.diff(lab.indptr))
        lids = np.asarray(lab.indices, np.int32)
        if name and self.k.has(name, "label_hits"):
            hit = np.empty(lids.size, np.int32)
            self.pool.run(self.k.fn(name, "label_hits"), buckets.shape[0], ptr(buckets), ptr(index.tables),
                          index.L, index.tables.shape[1], index.reservoir, ptr(lab.indptr), ptr(lids), ptr(hit),
                          min_per_thread=min_items(index.L * index.reservoir * lids.size / max(1, buckets.shape[0])))
            hit = hit.astype(bool)
        else:
            flat = index.tables.reshape(-1, index.reservoir)
            keys = (buckets[lrows] + np.arange(index.L, dtype=np.int64) * index.tables.shape[1]).ravel()
            cand = np.take(flat, keys, axis=0).reshape(lids.size, index.L * index.reservoir)
            hit = np.count_nonzero(cand == lids[:, None], axis=1) > 0
        return lids[~hit], np.ascontiguousarray(buckets[lrows[~hit]])

    def insert_apply(self, name: str, index):
        """The last step of `LSHIndex.insert` (its `apply`): the native insert kernel when the layer
        has one (the spec's apply_inserts, the same arithmetic), else the spec."""
        fn = self.k.fn(name, "insert") if self.native and name and self.k.has(name, "insert") else None

        def apply(keys, nid, u):
            if fn is None:
                index.apply_inserts(keys, nid, u)
                return
            keys = np.ascontiguousarray(keys, dtype=np.int64)
            nid, u = np.ascontiguousarray(nid, dtype=np.int32), np.ascontiguousarray(u, dtype=np.float64)
            fn(keys.size, ptr(keys), ptr(nid), ptr(u), index.reservoir, ptr(index.tables), ptr(index.counts))
        return apply

    def _insert_missed(self, index, buckets, lab, rng, name: str = "") -> None:
        """Frozen tables: labels a lookup did not retrieve go into the probed buckets (as the spec)."""
        ids, where = self._missed_labels(index, buckets, lab, name)
        if ids.size:       # absent: a missed label is in none of its probed buckets
            index.insert(ids.astype(np.int64), where, rng, absent=True, apply=self.insert_apply(name, index))

    _select = select           # the name tests/test_native.py calls

    # ------------------------------------------------------------ forward
    def _forward(self, batch, mode: str, active: dict | None, seed: int, insert_missed=False):
        if mode not in ("train", "dense", "sparse"):
            raise ValueError(f"mode must be 'train', 'dense' or 'sparse', not {mode!r}")
        values = dict(batch.inputs)
        missing = [n for n in self.inputs if n not in values]
        if missing:
            raise BoltValidationError(f"the batch has no values for input(s) {', '.join(missing)}")
        for n, spec in self.inputs.items():         # the buffers the kernels read, converted once
            values[n] = (_csr(values[n]) if spec["kind"] in SPARSE_INPUT_KINDS
                         else np.ascontiguousarray(values[n], dtype=np.float32))
        step = Step(mode=mode, seed=seed, step=int(self.state.step), batch=batch,
                    B=values[next(iter(self.inputs))].shape[0], active=active, insert_missed=insert_missed)
        caches = {}
        for layer in self.layers:
            name = layer["name"]
            values[name], caches[name] = NATIVE_OPS[layer["op"]][0](
                self, layer, [values[s] for s in layer["inputs"]], step)
        self._inv = caches[self.output].get("inv")
        return values, caches, step

    def _output_value(self, cache):
        """The output as the spec gives it: (ids, activation) over an active set, else the activation."""
        act = activate(self.by_name[self.output]["activation"], cache["out"])
        return (cache["ids"], act) if cache["ids"] is not None else act

    def forward(self, batch, mode: str = "dense", active: dict | None = None) -> dict:
        if not self.native:
            return self.interp.forward(batch, mode, active)
        values, caches, _ = self._forward(batch, mode, active, self._seed(mode))
        values[self.output] = self._output_value(caches[self.output])
        return values

    def _seed(self, mode: str) -> int:
        """63-bit seed of the native random fill and of the ops' randomness: boltc/ops/base.py
        step_seed, the one both executors use (a resumed run draws what the uninterrupted one drew)."""
        seed = step_seed(self.seed, self.state.step, mode)
        if self.stream and mode == "train":        # a data-parallel worker's own draws (its rank)
            seed = mix_seed(seed, self.stream)
        return seed

    # ------------------------------------------------------------ what the ops' runners call
    def run(self, name: str, role: str, n: int, *args, work: float, per_thread=None) -> None:
        """Layer `name`'s kernel `role` over n items of about `work` multiply-adds each, on the pool."""
        if self.threads == 1:                # the pool's one-slice path, without its bookkeeping
            if n > 0:
                fn = self.k.fn(name, role)
                if per_thread is None:
                    fn(0, n, *args)
                else:
                    scr = per_thread[0]
                    fn(0, n, *args, *(scr if isinstance(scr, tuple) else (scr,)))
            return
        native_ops.run(self, name, role, n, *args, work=work, per_thread=per_thread)

    def run_split(self, name: str, role: str, n: int, *args, work: float, **kw) -> None:
        """As `run`, with a kernel of the split module (gradient mode, boltc/lower/split.py)."""
        self.pool.run(self.split_kernels.fn(name, role), n, *args, min_per_thread=min_items(work), **kw)

    def worth_two_threads(self, total_work: float) -> bool:
        return native_ops.worth_two_threads(total_work)

    def param_state(self, name: str):
        """(params, first moments, second moments) of a layer."""
        return self.state.params[name], self.state.m.get(name, {}), self.state.v.get(name, {})

    # ------------------------------------------------------------ training
    def _hyper(self, lr: float) -> np.ndarray:
        """The update kernels' HYPER values from the interpreter's optimizer (Adam.hyper): one source
        for both backends' float32 rounding. SGD reads lr and momentum; the Adam slots are inert."""
        opt = self.interp.optimizer
        vals = {"lr": lr, "beta1": 0.0, "beta2": 0.0, "eps": 1.0, "bc1": 1.0, "bc2": 1.0,
                "momentum": float(getattr(opt, "mu", 0.0))}
        if hasattr(opt, "hyper"):
            h = opt.hyper(lr, max(1, self.state.step), np.float32)
            vals.update(beta1=h["b1"], beta2=h["b2"], eps=h["eps"], bc1=h["bc1"], bc2=h["bc2"])
        return np.array([vals[k] for k in HYPER], np.float32)

    def _kept_inversion(self, key, make):
        """An inversion's output buffers, kept per key (kernel, sizes) and rewritten by the next inversion
        of that key: a step uses its inversions only until it returns (a caller keeping one copies it)."""
        out = self._inversions.get(key)
        if out is None:
            if len(self._inversions) > 64:          # batch sizes of inference or a last short batch
                self._inversions.clear()
            out = self._inversions[key] = make()
        return out

    def invert(self, ids: np.ndarray, dim: int, fn):
        """Neuron (or feature) -> positions with the `invert` kernel `fn` made for `dim` (serial
        counting sort; a few ms even at 670k)."""
        flat = np.ascontiguousarray(ids.reshape(-1), dtype=np.int32)
        n = flat.size
        if dim not in self._counts:
            self._counts[dim] = (np.zeros(dim, np.int32), np.empty(dim, np.int64))
        counts, offs = self._counts[dim]
        uniq, seg, pos, nu, _ = self._kept_inversion((id(fn), n), lambda: (
            np.empty(max(n, 1), np.int32), np.empty(n + 1, np.int64), np.empty(max(n, 1), np.int32),
            np.zeros(1, np.int64), fn))
        fn(ptr(flat), n, ptr(counts), ptr(offs), ptr(uniq), ptr(seg), ptr(pos), ptr(nu))
        return uniq, seg, pos, int(nu[0])

    def invert_owned(self, ids: np.ndarray, lo: int, hi: int, fn):
        """`invert` of only the ids in [lo, hi) (a row owner's; the split kernel `invert_range` `fn`):
        (uniq, seg, pos, number of unique ids), uniq and the positions per id as `invert` gives them
        for that range, seg counted from 0. Buffers are kept as `invert`'s are."""
        flat = np.ascontiguousarray(ids.reshape(-1), dtype=np.int32)
        n, span = flat.size, int(hi) - int(lo)
        uniq, seg, pos, nu, counts, offs, _ = self._kept_inversion(("owned", id(fn), n, span), lambda: (
            np.empty(min(span, n) + 1, np.int32), np.empty(min(span, n) + 1, np.int64),
            np.empty(max(n, 1), np.int32), np.zeros(1, np.int64),
            np.zeros(span + 1, np.int32), np.empty(span + 1, np.int64), fn))
        fn(ptr(flat), n, int(lo), int(hi), ptr(counts), ptr(offs), ptr(uniq), ptr(seg), ptr(pos), ptr(nu))
        return uniq, seg, pos, int(nu[0])

    def train_step(self, batch, lr: float, active: dict | None = None) -> np.ndarray:
        if not self.native:
            return self.interp.train_step(batch, lr, active)
        if self.sharded_moments:
            raise BoltValidationError("this executor holds a shard of the optimizer state: train with "
                                      "gradients() and apply_gradients()")
        loss, lab = self._backward(batch, lr, active, None, None)
        counts = self.state.params[self.output].get("label_count")
        if counts is not None:
            counts += np.bincount(lab.indices, minlength=counts.size).astype(np.float32)
        return loss

    # ------------------------------------------------------------ split training (data-parallel workers)
    @property
    def split_kernels(self):
        """The gradient and apply kernels (boltc/lower/split.py), compiled on first use."""
        if self._split is None:
            self._split = compile_split(self.plan)
        return self._split

    def gradients(self, batch, active: dict | None = None, batch_size: int | None = None, factors: bool = False,
                  defer_dx: tuple | None = None):
        """The batch's gradient without touching weights, moments or tables: (per-example loss,
        {(layer, tensor): RowGrad}). The loss gradient is divided by `batch_size` (default: this
        batch's rows; a data-parallel worker passes the global batch, so workers' gradients add up).
        Frozen tables' missed labels go to `self.missed` when it is a dict, else are inserted as
        train_step does. `apply_gradients(grads, lr)` after it equals train_step bit for bit (except
        label counts, which the caller adds: workers add the global batch's).
        defer_dx = (output, layer below) in factor mode: the output's input gradient is left to its
        row owners (runtime/distributed/owner_dx.py): the layer below hands out its batch rows with
        dz None."""
        if not self.native:
            out = self.interp.gradients(batch, active, batch_size)
            return out + ({},) if factors else out
        grads: dict = {}
        facts: dict | None = {} if factors else None
        loss, _ = self._backward(batch, None, active, grads, batch_size, facts, defer_dx if factors else None)
        out = (loss, {key: RowGrad(rows, values) for key, (rows, values) in grads.items()})
        return out + (facts,) if factors else out

    def apply_gradients(self, grads: dict, lr: float, target=None) -> None:
        """One optimizer step (state.step advances) from `grads` ((layer, tensor) -> RowGrad) on the rows
        they list. `target` (default the state) holds the arrays to update (.params, .m, .v): a worker
        owning rows [lo, hi) passes views W[lo:hi] with its moment shards and row ids minus lo."""
        self.apply_parts({key: one_part(g) for key, g in grads.items()}, lr, target)

    def apply_parts(self, parts: dict, lr: float, target=None, copy_out: bool = False) -> dict:
        """One optimizer step from gradients given in parts: parts[key] = (rows or None, pos, values),
        pos (nparts, n) int32 = each part's row holding row u (-1: absent), values the parts' arrays;
        the parts are summed in order inside the update kernel (boltc/lower/split.py rows_apply). With
        copy_out, returns key -> the updated rows (n, ...), copied in the same pass."""
        if not self.native:
            return self.interp.apply_parts(parts, lr, target, copy_out)
        self.state.step += 1
        return self._apply_parts(parts, self._hyper(lr), target or self.state, copy_out)

    def apply_update(self, parts: dict, factors: dict, lr: float, owned: dict, target, copy_out: bool = False,
                     first=None):
        """One optimizer step of a row owner: `parts` as apply_parts, and `factors` (layer -> the whole
        batch's merged factors, from gradients(factors=True)) through the fused update kernels
        restricted to the rows `owned[(layer, tensor)] = (lo, hi)`; `target` holds the owner's moment
        shards. `first(ex, hyper, factors)`, when given, runs before the factor layers: it updates
        layers itself and returns ({(layer, tensor): RowGrad} of those, the factors left to apply)
        (runtime/distributed/owner_dx.py). -> (apply_parts' new rows, {(layer, tensor): RowGrad(rows
        or None, new values)})."""
        if not self.native:
            if factors:
                raise BoltValidationError("factors come from the native backend's gradients(factors=True)")
            return self.interp.apply_parts(parts, lr, target, copy_out), {}
        self.state.step += 1
        hyper = self._hyper(lr)
        out = self._apply_parts(parts, hyper, target, copy_out)
        rows = {}
        if first is not None:
            rows, factors = first(self, hyper, factors)
        for name, f in factors.items():
            layer = self.by_name[name]
            ts = [t for (l, t) in owned if l == name]
            res = FACTOR_KINDS[f["kind"]][1](self, layer, f, {t: owned[(name, t)] for t in ts},
                                              {t: (target.m[name][t], target.v[name][t]) for t in ts}, hyper, copy_out)
            for t, (r, values) in res.items():
                rows[(name, t)] = RowGrad(r, values)
        return out, rows

    def _apply_parts(self, parts: dict, hyper, target, copy_out: bool) -> dict:
        sk = self.split_kernels
        out = {}
        for (layer, tensor), (rows, pos, vals) in parts.items():
            W = target.params[layer][tensor]
            m, v = target.m[layer][tensor], target.v[layer][tensor]
            width = W.size // max(1, W.shape[0])
            n = W.shape[0] if rows is None else rows.size
            if pos.shape != (len(vals), n) or any(p.dtype != np.float32 or p.size % max(1, width) for p in vals):
                raise ValueError(f"gradient parts of {layer}.{tensor} do not fit a tensor of shape {W.shape}")
            vals = [np.ascontiguousarray(p) for p in vals]
            addrs = np.array([p.ctypes.data for p in vals], np.int64)
            new = grad_buffer(self, ("out", layer, tensor), (n,) + W.shape[1:]) if copy_out else None
            pos = np.ascontiguousarray(pos, dtype=np.int32)
            self.pool.run(sk.fn(layer, f"apply_{tensor}"), n, ptr(rows), len(vals), n, ptr(pos), ptr(addrs), ptr(W),
                          ptr(m), ptr(v), ptr(hyper), ptr(new), int(copy_out), per_thread=self.scratch_ptrs,
                          min_per_thread=min_items(width * (ADAM_OPS + len(vals))))
            out[(layer, tensor)] = new
        return out

    def _backward(self, batch, lr, active, grads, batch_size, factors=None, defer_dx=None):
        """Forward and backward of a training batch: updates (grads None) or gradients into `grads`."""
        if batch.labels is None:
            raise BoltValidationError("training needs labels")
        _, caches, step = self._forward(batch, "train", active, self._seed("train"), insert_missed=True)
        oc = caches[self.output]
        z, ids, B = oc["out"], oc["ids"], step.B
        self.last_active = {n: c["ids"] for n, c in caches.items() if isinstance(c, dict) and c.get("ids") is not None}
        lab = _csr(batch.labels)
        if batch.weights is None:              # 1 / batch for every example: the same array each step
            scale = self._step_buffers.get(("scale", B, batch_size))
            if scale is None:
                scale = self._step_buffers[("scale", B, batch_size)] = np.full(
                    B, np.float32(1) / np.float32(batch_size or B), np.float32)
        else:
            w = np.asarray(batch.weights, np.float32)
            scale = np.ascontiguousarray(w / np.float32(batch_size or B), dtype=np.float32)
        loss = np.empty(B, np.float32)
        if grads is None and factors is None:
            # the logits' gradient lives until the backward below returns: one buffer per shape (in
            # gradient and factor modes it is handed out, so it is fresh there)
            grad = self._step_buffers.get(("grad", z.shape))
            if grad is None:
                if len(self._step_buffers) > 64:
                    self._step_buffers.clear()
                grad = self._step_buffers[("grad", z.shape)] = np.empty_like(z)
        else:
            grad = np.empty_like(z)
        loss_ids = ids if ids is not None else np.ascontiguousarray(
            np.broadcast_to(np.arange(z.shape[1], dtype=np.int32), z.shape))
        self.pool.run(self.k.fn(self.output, self.loss_role + ("" if ids is not None else "_all")), B, ptr(z),
                      ptr(loss_ids), ptr(lab.indptr), ptr(lab.indices), ptr(scale), ptr(loss), ptr(grad),
                      per_thread=[ptr(m) for m in self.marks(self.by_name[self.output]["dim"])],
                      min_per_thread=min_items(20 * z.shape[1]))
        if grads is None:
            self.state.step += 1
            step.hyper = self._hyper(lr)
        step.grads, step.factors, step.defer_dx = grads, factors, defer_dx
        # backward, last layer first; value gradients summed into each producer in this fixed order
        vgrads = {self.output: grad}
        for layer in reversed(self.layers):
            g = vgrads.pop(layer["name"], None)
            if g is None:
                continue                                   # no path from this layer to the loss
            in_grads = NATIVE_OPS[layer["op"]][1](self, layer, caches[layer["name"]], g, step)
            for src, dg in zip(layer["inputs"], in_grads):
                if dg is not None and src in self.by_name:
                    vgrads[src] = dg if src not in vgrads else vgrads[src] + dg
        if defer_dx is not None:                   # the layer below: its batch rows, dz to come
            x = caches[defer_dx[1]]["x"]
            factors[defer_dx[1]] = {"kind": "sparse_input", "indptr": x.indptr, "indices": x.indices,
                                    "data": x.data, "dz": None}
        return loss, lab

    # ------------------------------------------------------------ inference
    def predict(self, batch, top_k: int, sparse: bool = False):
        if not self.native:
            return self.interp.predict(batch, top_k, sparse)
        mode = "sparse" if sparse else "dense"
        _, caches, _ = self._forward(batch, mode, None, self._seed(mode))
        z, ids = caches[self.output]["out"], caches[self.output]["ids"]
        B, n = z.shape
        counts = self.state.params[self.output].get("label_count")
        use_mask = counts is not None and bool(counts.any())
        k = int(top_k)
        out_ids = np.empty((B, k), np.int32)
        out_sc = np.empty((B, k), np.float32)
        suffix = "" if ids is not None else "_all"
        self.pool.run(self.k.fn(self.output, "topk" + suffix), B, ptr(z), ptr(ids),
                      ptr(counts) if use_mask else None, int(use_mask), k, ptr(out_ids), ptr(out_sc),
                      min_per_thread=min_items(4 * n))
        # scores as the spec reports them: the output activation's values (masking happens after);
        # both activations are increasing, so the top-k of the logits is the top-k of the scores
        if self.loss_role == "ce":
            lse = np.empty((B, 1), np.float32)
            self.pool.run(self.k.fn(self.output, "lse" + suffix), B, ptr(z), ptr(lse), min_per_thread=min_items(10 * n))
            with np.errstate(invalid="ignore"):
                scores = np.exp(out_sc - lse)
        else:
            with np.errstate(invalid="ignore", over="ignore"):
                scores = activate("sigmoid", np.where(out_ids >= 0, out_sc, 0).astype(np.float32))
        return out_ids, np.where(out_ids >= 0, scores, -np.inf).astype(np.float32)
