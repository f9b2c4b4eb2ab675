"""One data-parallel worker: a model replica that trains on its own shard and owns a share of the update.

Plain Python (no Ray here): runtime/distributed/cluster.py runs it in-process (tests, debugging) or as
a Ray actor. Every replica holds identical weights and LSH tables at the start of every update. The
optimizer is divided, not repeated (ZeRO stage 1 on the rows a batch touches): worker r of N owns rows
[R*r/N, R*(r+1)/N) of every trained tensor (R its rows) and the Adam moments of those rows only, so
the optimizer's memory and work shrink with N. One update:
  1. `grads_step`: the executor's `gradients()` of the local batch (native kernels; the loss gradient
     is divided by the global batch, so workers' gradients add up to the global batch's mean), cut
     by owner; the part for worker j is put where j fetches it (Ray's object store: peer to peer).
  2. `reduce_apply`: worker j fetches its parts from every worker, sums them in worker order (the
     same sum, in the same order, as a replicated update: bit-identical, tested), applies lazy Adam
     to its rows (`apply_parts` on row-range views with its moment shard) and returns the new rows
     (Ray keeps a call's result in the worker's object store, where the others fetch it).
  3. `finish` (at the start of the next grads_step): every worker fetches the others' new rows, adds
     the global batch's label counts, inserts the labels frozen tables missed (in worker order, with a
     step-seeded generator) and runs the LSH upkeep at the same global step with the same seeds.
The driver only submits the calls, passing each call the references of the results it needs; workers
fetch those results themselves (Ray: `get` waits until they exist), so the driver never waits inside
an update and no byte of a gradient or a row passes through it.

`label_count` (how often each output neuron was a label; not trained) is not a gradient: workers send
the label ids of their batch and every replica adds the whole global batch's.
"""
from __future__ import annotations

import copy
import time
from types import SimpleNamespace

import numpy as np

from boltc.runtime.data.dataset import Dataset
from boltc.runtime.exec.gradients import Key, RowGrad
from boltc.runtime.exec.native import merge_factors
from boltc.runtime.exec.state import aligned_copy, aligned_empty
from boltc.runtime.lsh.index import LSHIndex, missed_labels  # noqa: F401 (re-exported)
from boltc.runtime.distributed import owner_dx
from boltc.runtime.distributed.ownership import counted_inputs as ownership_inputs, ownership, rebalanced, row_ranges

NOT_TRAINED = ("label_count",)
CODES = "lsh_codes"               # a shared buffer of a layer's neuron codes (table rebuilds), not a tensor
TABLES, COUNTS = "lsh_tables", "lsh_counts"     # a layer's LSH tables and bucket counts, shared
HASH_CHUNK = 1 << 16              # neurons hashed per call (bounded scratch), as the executor's rebuild
# Workers sharing a machine even out the owners' update of the wide output every BALANCE_EVERY updates
# (`rebalance`): its training active sets fall unevenly on equal ranges of its neurons (labels and the
# frequency-weighted fill favour frequent labels, often the low ids: 20ng_nextword's 54% / 46%), and
# every update's last meeting waits for the slower owner
BALANCE_EVERY = 16


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.thread_time()


def portable_state(state):
    """The state with LSH indexes rebuilt from their plain arrays (meta() + arrays()): an executor may
    attach native hash functions (ctypes) to an index, which can neither be pickled for Ray nor shared
    between replicas. Weights and moments are shared, not copied."""
    lsh = {n: LSHIndex.from_arrays(idx.meta(), {k: np.array(a) for k, a in idx.arrays().items()})
           for n, idx in (getattr(state, "lsh", {}) or {}).items()}
    return type(state)(params=state.params, m=state.m, v=state.v, step=int(state.step), lsh=lsh)


def merge_facts(parts: list[dict]) -> dict:
    """Every worker's batch facts, concatenated in worker order."""
    inserts: dict = {}
    for p in parts:
        for name, (ids, b) in p.get("inserts", {}).items():
            inserts.setdefault(name, []).append((ids, b))
    return {"labels": np.concatenate([p["labels"] for p in parts]) if parts else np.zeros(0, np.int32),
            "inserts": {n: (np.concatenate([i for i, _ in v]), np.concatenate([b for _, b in v])) for n, v in inserts.items()}}


def facts_nbytes(facts: dict) -> int:
    return int(facts["labels"].nbytes + sum(i.nbytes + b.nbytes for i, b in facts.get("inserts", {}).values()))


def trained_shapes(state) -> dict[Key, tuple[int, ...]]:
    return {(layer, name): arr.shape for layer, ts in state.params.items() for name, arr in ts.items()
            if name not in NOT_TRAINED}


def split_by_owner(grads: dict[Key, RowGrad], shapes: dict[Key, tuple], world: int,
                   bounds_of: dict | None = None) -> list[dict[Key, RowGrad]]:
    """A gradient cut into each owner's rows (`bounds_of[key]`: every owner's (lo, hi), default equal
    ranges). Listed rows keep their tensor row ids; a whole tensor's part is its owner's row range
    (rows None: relative to the range)."""
    parts: list[dict[Key, RowGrad]] = [{} for _ in range(world)]
    for key, g in grads.items():
        bounds = (bounds_of or {}).get(key) or row_ranges(shapes[key][0], world)
        if g.rows is None:
            for r, (lo, hi) in enumerate(bounds):
                parts[r][key] = RowGrad(None, g.values[lo:hi])
            continue
        cuts = np.searchsorted(g.rows, [lo for lo, _ in bounds] + [bounds[-1][1]])
        for r in range(world):
            a, b = cuts[r], cuts[r + 1]
            parts[r][key] = RowGrad(g.rows[a:b], g.values[a:b])
    return parts


def sum_parts(parts: list[dict[Key, RowGrad]]) -> dict[Key, RowGrad]:
    """The sum of row-sparse gradients, added in the order given (every replica and every run adds the
    same values in the same order: the same bits). Listed rows: the union; whole tensors: elementwise.
    The union is a mark per row over the parts' span (O(rows touched + span), no sort): on the 100k
    model a worker's span is its 50k-row share, marked in microseconds where np.union1d took ~20 ms."""
    if len(parts) == 1:
        return dict(parts[0])
    out: dict[Key, RowGrad] = {}
    for key in parts[0]:
        gs = [p[key] for p in parts]
        if gs[0].rows is None:
            acc = np.array(gs[0].values, np.float32)
            for g in gs[1:]:
                acc += g.values
            out[key] = RowGrad(None, acc)
            continue
        listed = [g for g in gs if g.rows.size]
        if not listed:
            out[key] = gs[0]
            continue
        lo = min(int(g.rows[0]) for g in listed)
        hi = max(int(g.rows[-1]) for g in listed) + 1
        where = np.zeros(hi - lo, np.int32)                   # row - lo -> 1 + its position in the union
        for g in listed:
            where[g.rows - lo] = 1
        union = (np.flatnonzero(where) + lo).astype(np.int32)
        np.cumsum(where, out=where)
        acc = np.zeros((union.size,) + gs[0].values.shape[1:], np.float32)
        for g in listed:                           # a part's rows are unique: fancy += adds each once
            acc[where[g.rows - lo] - 1] += g.values
        out[key] = RowGrad(union, acc)
    return out


def merge_index(gs: list[RowGrad]):
    """Where each part holds each row of the parts' union: (union rows or None for whole tensors,
    pos (nparts, n) int32 with -1 where a part lacks the row, the parts' values). What `apply_parts`
    sums in part order; the same rows and sums as `sum_parts`. The union is a mark per row over the
    parts' span (no sort: on the 100k model a share spans 50k rows)."""
    vals = [g.values for g in gs]
    if gs[0].rows is None:
        n = gs[0].values.shape[0]
        return None, np.tile(np.arange(n, dtype=np.int32), (len(gs), 1)), vals
    listed = [g.rows for g in gs if g.rows.size]
    if not listed:
        return gs[0].rows, np.zeros((len(gs), 0), np.int32), vals
    lo = min(int(r[0]) for r in listed)
    hi = max(int(r[-1]) for r in listed) + 1
    where = np.zeros(hi - lo, np.int32)                       # row - lo -> 1 + its position in the union
    for r in listed:
        where[r - lo] = 1
    union = (np.flatnonzero(where) + lo).astype(np.int32)
    np.cumsum(where, out=where)
    pos = np.full((len(gs), union.size), -1, np.int32)
    for i, g in enumerate(gs):
        if g.rows.size:
            pos[i, where[g.rows - lo] - 1] = np.arange(g.rows.size, dtype=np.int32)
    return union, pos, vals


def grads_nbytes(grads: dict[Key, RowGrad]) -> int:
    return sum(g.nbytes for g in grads.values())


def factors_nbytes(factors: dict) -> int:
    return int(sum(a.nbytes for f in factors.values() for a in f.values() if isinstance(a, np.ndarray)))


class Worker:
    """A replica + a shard + the optimizer state of its share of the rows.

    `make_executor(plan, state, sharded_moments=True)` builds the single-machine executor; `state` holds
    full weights and tables and full moments, of which the worker keeps only its rows' (copies), so a
    run restarted or resumed from any full state continues exactly. `put`/`get` move a payload to or
    from the other workers (Ray's object store, or identity in-process).
    """

    def __init__(self, plan: dict, state, shard: Dataset, rank: int, world: int, local_batch: int,
                 make_executor, seed: int = 0, global_batch: int | None = None, put=None, get=None):
        self.plan, self.data = plan, shard
        self.rank, self.world, self.local_batch = rank, world, int(local_batch)
        self.global_batch = int(global_batch or plan["train"]["batch"])
        self.seed = seed
        self.put, self.get = put or (lambda x: x), get or (lambda x: x)
        self.shapes = trained_shapes(state)
        self.state = type(state)(params=state.params, m={}, v={}, step=int(state.step), lsh=state.lsh)
        self._full_moments = (state.m, state.v)      # until the driver sets the ownership (set_ownership)
        self.ex = make_executor(plan, self.state, sharded_moments=True)
        for ex in (self.ex, getattr(self.ex, "interp", None)):
            if ex is not None:
                ex.stream, ex.missed = rank, {}    # own random-fill draws; missed labels go to every replica
        # gradients and new rows in buffers kept between updates: each update's are consumed (put, or
        # read by the other in-process workers) before the next is computed; accumulated ones are copied
        self.ex.reuse_grad_buffers = True
        # layers whose weight gradient the native kernels can hand out as factors (the layer's input
        # rows and pre-activation gradients, ~100x smaller than the touched rows' gradient) do so: each
        # owner runs the fused update kernel on the whole batch's factors for its rows
        # (runtime/exec/native.py apply_update); the others' gradients go out as row parts
        self.use_factors = bool(getattr(self.ex, "native", False)) and hasattr(self.ex, "apply_update")
        self.output = next((l for l in plan["layers"] if l["name"] == plan.get("output")), None)
        # the wide output's input gradient: computed by its row owners (workers sharing a machine) or,
        # with the same arithmetic, by each worker for its examples (owner_dx.py); None: by each worker
        # with one process's arithmetic (one worker: the fused step's bits)
        self.owner_dx = None
        if self.use_factors and world > 1 and self.output is not None:
            self.owner_dx = owner_dx.deferrable(plan, state.params[self.output["name"]]["W"].nbytes)
        self.own_factors: dict = {}
        self.shared, self.mesh, self.codes = False, None, {}
        self.balanced: list = []          # tensors whose owners' ranges follow the measured work (rebalance)
        self.balance_cpu = 0.0            # CPU seconds of our updates since the last rebalance
        self.full_moments: dict = {}      # shared: (layer, tensor) -> the whole (m, v) in the machine's file
        self.table_share: dict[str, tuple[int, int]] = {}     # shared tables: layer -> the tables we write
        self._own(ownership(plan, self.shapes, world))
        self.own_part: dict = {}
        self.cpu_start = None            # CPU seconds of this process from its first epoch on (timings)
        self.start_epoch(0)
        self.seconds = {"compute": 0.0, "exchange": 0.0, "update": 0.0, "upkeep": 0.0}
        self.cpu = dict(self.seconds)
        self.bytes = {"sent": 0, "received": 0, "grads_sent": 0, "rows_sent": 0}

    def _own(self, bounds: dict) -> None:
        """Own rows bounds[key][rank] of every trained tensor: views of them and copies of their moments
        (from the full state this worker started from; a tensor whose rows stay the same keeps its)."""
        m, v = self._full_moments
        before = getattr(self, "owned", {})
        self.bounds = bounds
        self.owned = {k: tuple(b[self.rank]) for k, b in bounds.items()}
        m_shard, v_shard, views = {}, {}, {}
        for (layer, t), (lo, hi) in self.owned.items():       # this worker's share of the moments
            if before.get((layer, t)) == (lo, hi):
                m_shard.setdefault(layer, {})[t] = self.shard.m[layer][t]
                v_shard.setdefault(layer, {})[t] = self.shard.v[layer][t]
            else:
                m_shard.setdefault(layer, {})[t] = aligned_copy(np.array(m[layer][t][lo:hi]))
                v_shard.setdefault(layer, {})[t] = aligned_copy(np.array(v[layer][t][lo:hi]))
            views.setdefault(layer, {})[t] = self.state.params[layer][t][lo:hi]
        self.shard = SimpleNamespace(params=views, m=m_shard, v=v_shard)

    def feature_counts(self) -> dict:
        """How often each feature occurs in this shard, per sparse input whose features are a layer's
        rows (ownership.py; the driver sums the workers')."""
        out = {}
        for name in set(ownership_inputs(self.plan).values()):
            x = self.data.inputs.get(name)
            if x is not None and hasattr(x, "indices"):
                dim = next(l["in_dim"] for l in self.plan["layers"] if l["inputs"][0] == name)
                out[name] = np.bincount(x.indices, minlength=dim).astype(np.int64)
        return out

    def set_ownership(self, feature_counts: dict, rows: int) -> None:
        """The run's ownership, the same on every worker (ownership.py), from the whole training set's
        feature counts and rows; called once, before the first update (and before sharing weights)."""
        self._own(ownership(self.plan, self.shapes, self.world, feature_counts, rows, self.global_batch))
        self._full_moments = None

    # ------------------------------------------------------------------ data
    def start_epoch(self, epoch: int) -> None:
        """Reseed from (seed, rank, epoch) so a run resumed at an epoch boundary replays the same batches."""
        self.epoch = int(epoch)
        self._order, self._pos, self._local_epoch = np.zeros(0, np.int64), 0, -1
        if self.cpu_start is None:
            self.cpu_start = time.process_time()

    def _next_rows(self) -> np.ndarray:
        """The next `local_batch` rows of a shuffled pass over the shard (passes run back to back)."""
        take = []
        need = self.local_batch
        while need > 0:
            if self._pos >= self._order.size:
                self._local_epoch += 1
                order_rng = np.random.default_rng([self.seed, 104729, self.rank, self.epoch, self._local_epoch])
                self._order, self._pos = order_rng.permutation(self.data.rows).astype(np.int64), 0
                if self._order.size == 0:
                    break
            chunk = self._order[self._pos:self._pos + need]
            self._pos += chunk.size
            need -= chunk.size
            take.append(chunk)
        return np.concatenate(take) if take else np.zeros(0, np.int64)

    # ------------------------------------------------------------------ one update
    def compute(self, record: bool = False):
        """The local batch's gradient (divided by the global batch): (grads, examples, loss sum, facts[,
        rows, active])."""
        t0 = _clock()
        rows = self._next_rows()
        batch = self.data.take(rows)
        if self.use_factors:
            d = self.owner_dx
            losses, grads, factors = self.ex.gradients(batch, batch_size=self.global_batch, factors=True,
                                                       defer_dx=(d.output, d.source) if d else None)
            if d is not None and self.mesh is None:       # no owners on this machine: our examples' own
                dx = owner_dx.local_dx(self.ex, self.output, factors[d.output], self.bounds[(d.output, "W")])
                factors = owner_dx.with_dz(factors, d, dx)
        else:
            (losses, grads), factors = self.ex.gradients(batch, batch_size=self.global_batch), {}
        grads = {k: g for k, g in grads.items() if k[1] not in NOT_TRAINED}
        facts = self.batch_facts(batch)
        self._took("compute", t0)
        out = (grads, int(rows.size), float(np.sum(losses)), facts, factors)
        return out + ((rows, dict(getattr(self.ex, "last_active", None) or
                                  getattr(getattr(self.ex, "interp", None), "last_active", {}))) if record else ())

    def batch_facts(self, batch) -> dict:
        """What every replica needs from this batch besides the gradient: label ids (for label_count) and
        the labels frozen LSH tables missed (for BOLT's insertion)."""
        labels = np.zeros(0, np.int32)
        if self.output is not None and "label_count" in self.state.params.get(self.output["name"], {}):
            labels = batch.labels.indices.astype(np.int32)
        missed = {}
        for ex in (self.ex, getattr(self.ex, "interp", None)):
            if ex is not None and ex.missed:
                missed.update(ex.missed)
                ex.missed = {}
        return {"labels": labels, "inserts": missed}

    def grads_step(self, prev, update: int, accumulate: int = 1, record: bool = False):
        """Finish the previous update (if any), then compute this one's gradient and hand each owner its
        part. Returns (one handle per owner, None for our own part; examples; loss sum; facts; bytes put[,
        rows, active])."""
        if prev is not None:
            self.finish(prev)
        parts = []
        for _ in range(accumulate):
            part = self.compute(record)
            if accumulate > 1:                         # the next compute reuses the gradient buffers
                part = ({k: RowGrad(None if g.rows is None else g.rows.copy(), g.values.copy())
                         for k, g in part[0].items()},) + part[1:]
            parts.append(part)
        grads = sum_parts([p[0] for p in parts])
        n, loss = sum(p[1] for p in parts), sum(p[2] for p in parts)
        facts = merge_facts([p[3] for p in parts])
        t0 = _clock()
        by_owner = split_by_owner(grads, self.shapes, self.world, self.bounds)
        self.own_part = by_owner[self.rank]
        handles, sent = [], 0
        for r, part in enumerate(by_owner):
            if r == self.rank:
                handles.append(None)
                continue
            handles.append(self.put(part))
            sent += grads_nbytes(part)
        self.bytes["sent"] += sent
        self.bytes["grads_sent"] += sent
        # the layers' factors (inputs and pre-activation gradients, a few hundred KB) go to every owner
        factors = merge_factors([p[4] for p in parts])
        self.own_factors = factors
        fsent = factors_nbytes(factors) * (self.world - 1)
        handle = self.put(factors) if factors and self.world > 1 else None
        self.bytes["sent"] += fsent
        # grads_sent: what a worker on another machine sends (the projection to many machines reads
        # it); there it computes its own input gradient and sends the layer below's dz too
        deferred = self.owner_dx is not None and self.mesh is not None
        self.bytes["grads_sent"] += fsent + (n * self.output["in_dim"] * 4 * (self.world - 1) if deferred else 0)
        self._took("exchange", t0)
        extra = (np.concatenate([p[5] for p in parts]), [p[6] for p in parts]) if record else ()
        return ((handles, handle), n, loss, facts, sent + fsent) + extra

    def reduce_apply(self, grads_outs: list, lr: float):
        """Sum every worker's part for our rows (worker order), update them, and return the new rows and
        an acknowledgement. `grads_outs`: every worker's `grads_step` output (or its handle)."""
        t0 = _clock()
        outs = self.get(list(grads_outs))
        handles = [o[0][0][self.rank] for o in outs]
        others = self.get([h for h in handles if h is not None])
        self.bytes["received"] += sum(grads_nbytes(p) for p in others)
        it = iter(others)
        parts = [self.own_part if h is None else next(it) for h in handles]
        fhandles = [None if r == self.rank else o[0][1] for r, o in enumerate(outs)]
        fetched = iter(self.get([h for h in fhandles if h is not None]))
        factors = merge_factors([self.own_factors if h is None else next(fetched) for h in fhandles])
        self.bytes["received"] += sum(factors_nbytes(f) for f in [factors]) - factors_nbytes(self.own_factors)
        t1 = _clock()
        plans, unions = {}, {}
        for key in parts[0]:
            union, pos, vals = merge_index([p[key] for p in parts])
            lo = self.owned[key][0]
            unions[key] = union                       # row ids relative to the share's views below
            plans[key] = (None if union is None else (union - lo).astype(np.int32), pos, vals)
        copy_out = self.world > 1 and not self.shared       # shared weights: the others read our rows in place
        self._dx_meeting = (0.0, 0.0)
        if factors:
            first = self._owners_dx if self.owner_dx is not None and self.mesh is not None else None
            rows_out, factor_rows = self.ex.apply_update(plans, factors, lr, self.owned, self.shard, copy_out=copy_out,
                                                         first=first)
        else:
            rows_out, factor_rows = self.ex.apply_parts(plans, lr, target=self.shard, copy_out=copy_out), {}
        updated = {key: RowGrad(unions[key], rows_out[key]) for key in plans}
        updated.update(factor_rows)
        new_rows = updated if copy_out else {}
        self.own_part, self.own_factors = {}, {}
        t2 = _clock()
        self._took("update", t1, t2)
        self.seconds["update"] -= self._dx_meeting[0]         # the input-gradient meeting is exchange
        self.cpu["update"] -= self._dx_meeting[1]
        self.balance_cpu += t2[1] - t1[1] - self._dx_meeting[1]
        self._took("exchange", t0, t1)
        # what each other worker fetches; with shared weights nothing moves, but a worker on another
        # machine would fetch these rows (the projection to many machines reads `rows_sent`)
        row_bytes = sum(self._rows_nbytes(key, g.rows) for key, g in updated.items()) * (self.world - 1)
        self.bytes["sent"] += grads_nbytes(new_rows) * (self.world - 1)
        self.bytes["rows_sent"] += row_bytes
        return new_rows, True

    def _owners_dx(self, ex, hyper, factors: dict):
        """`apply_update`'s first step on workers sharing a machine: update our rows of the output and
        compute our neurons' share of the whole batch's input gradient (owner_dx.py), meet the other
        owners to sum the shares in owner order, and hand the layer below its dz."""
        d = self.owner_dx
        lo, hi = self.owned[(d.output, "W")]
        moments = {t: (self.shard.m[d.output][t], self.shard.v[d.output][t])
                   for (layer, t) in self.owned if layer == d.output}
        res, share = owner_dx.owner_update_dx(ex, self.output, factors[d.output], lo, hi, moments, hyper, False)
        t0 = _clock()
        shares = self.mesh.exchange([share] * self.world)        # every owner's share, in owner order
        self._took("exchange", t0)
        t1 = _clock()
        self._dx_meeting = (t1[0] - t0[0], t1[1] - t0[1])
        # "sent", not "grads_sent": workers on separate machines compute their own input gradient
        # (the projection to many machines reads grads_sent)
        self.bytes["sent"] += share.nbytes * (self.world - 1)
        self.bytes["received"] += share.nbytes * (self.world - 1)
        rest = owner_dx.with_dz(factors, d, owner_dx.sum_in_order(shares))
        del rest[d.output]
        return {(d.output, t): RowGrad(r, v) for t, (r, v) in res.items()}, rest

    def _rows_nbytes(self, key, rows) -> int:
        shape = self.shapes[key]
        width = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        lo, hi = self.owned[key]
        return (hi - lo if rows is None else rows.size) * width * 4 + (0 if rows is None else rows.nbytes)

    def use_shared_weights(self, arrays: dict, mesh=None) -> None:
        """Train on `arrays` ((layer, tensor) -> the machine's one copy, runtime/distributed/shared.py)
        instead of this replica's own trained tensors; they hold the same values. (layer, tensor, "m"
        or "v"): the whole moments, of which this owner uses its rows. With `mesh`, table rebuilds
        hash a share of the neurons each into the shared (layer, CODES) buffers, and natively filled
        tables (layer, TABLES / COUNTS) are refilled and inserted into a share of the tables each."""
        tables = {}
        for key, a in arrays.items():
            if len(key) == 3:                     # moments: ours are our rows of them (the owner's shard)
                layer, t, which = key
                lo, hi = self.owned[(layer, t)]
                getattr(self.shard, which)[layer][t] = a[lo:hi]
                full = self.full_moments.setdefault((layer, t), [None, None])
                full["mv".index(which)] = a
                continue
            layer, t = key
            if t == CODES:
                self.codes[layer] = a
            elif t in (TABLES, COUNTS):
                tables.setdefault(layer, {})[t] = a
            else:
                self.state.params[layer][t] = a
        for (layer, t), (lo, hi) in self.owned.items():
            self.shard.params[layer][t] = self.state.params[layer][t][lo:hi]
        self.shared, self.mesh = True, mesh
        if mesh is not None and self.codes and hasattr(self.ex, "divided_hashing"):
            self.ex.divided_hashing = self.hash_share
        # one copy of a layer's tables when the native kernels refill them (a share of the tables per
        # worker, `table_share`) and insert into them; the NumPy spec refills every table at once, so
        # its replicas keep their own
        for layer, arrs in tables.items():
            index = self.state.lsh.get(layer)
            if (mesh is None or index is None or not getattr(index, "_native_hash", False)
                    or not hasattr(self.ex, "divided_tables") or set(arrs) != {TABLES, COUNTS}):
                continue
            index.tables, index.counts = arrs[TABLES], arrs[COUNTS]
            self.table_share[layer] = row_ranges(index.L, self.world)[self.rank]
        if self.table_share:
            self.ex.divided_tables = self.tables_share
        # the wide output's ranges follow the owners' measured work: any contiguous ranges give the same
        # bits (each row's gradient is the same sum over the global batch whoever owns it), except where
        # the owners compute its input gradient (their ranges cut its chunks: owner_dx.py)
        out = self.output
        if (mesh is not None and self.use_factors and self.owner_dx is None and out is not None and out["op"] == "fc"
                and out.get("active", out["dim"]) < out["dim"]):
            self.balanced = [k for k in self.owned if k[0] == out["name"] and k in self.full_moments]

    def rebalance(self, seconds: list) -> None:
        """New ranges of the balanced tensors from every owner's update seconds of the last window (the
        same numbers on every worker, so the same ranges), between updates (after the last meeting of
        one, before the next computes): our views of the weights and moments follow them."""
        for key in self.balanced:
            layer, t = key
            new = rebalanced(self.bounds[key], seconds)
            self.bounds = {**self.bounds, key: new}
            lo, hi = self.owned[key] = new[self.rank]
            m, v = self.full_moments[key]
            self.shard.params[layer][t] = self.state.params[layer][t][lo:hi]
            self.shard.m[layer][t], self.shard.v[layer][t] = m[lo:hi], v[lo:hi]

    def hash_share(self, name: str, index, w: np.ndarray):
        """A table rebuild's codes with the hashing divided: this worker hashes its share of the
        neurons (rows of `w`) into the shared buffer, waits for the others' (every replica rebuilds at
        the same update) and returns all codes, which are what hashing every row here would give (the
        hash is per row). None (hash here) for a layer without a buffer."""
        codes = self.codes.get(name)
        if codes is None or codes.shape != (w.shape[0], index.L):
            return None
        lo, hi = row_ranges(w.shape[0], self.world)[self.rank]
        for n0 in range(lo, hi, HASH_CHUNK):
            n1 = min(hi, n0 + HASH_CHUNK)
            codes[n0:n1] = index.hash(np.ascontiguousarray(w[n0:n1], dtype=np.float32))
        self.mesh.barrier()
        return codes

    def tables_share(self, name: str, index):
        """A table refill with shared tables: (t0, t1, wait) = the tables this worker refills and the
        wait for the others' (every replica refills at the same update), or None (refill all)."""
        share = self.table_share.get(name)
        return None if share is None else share + (self.mesh.barrier,)

    def run_updates(self, mesh, updates: list, accumulate: int = 1, record: bool = False) -> list:
        """Workers on one machine sharing their weights: the updates [(update, lr, epoch, index in epoch,
        updates per epoch)] in one call, meeting the other workers through `mesh` (mesh.py) instead of
        the driver: hand each owner its part and everyone the factors, update our rows, add the
        batch's facts (label counts, frozen tables' inserts), wait until every owner has done so, then
        the schedule's rebuilds. The arithmetic is the
        per-update protocol's (`grads_step`, `reduce_apply`, `finish`), so both give the same bits.
        -> one `grads_step` output per update (handles None)."""
        out = []
        try:
            for update, lr, epoch, index, per_epoch in updates:
                mine = self.grads_step(None, update, accumulate, record)
                t0 = _clock()
                (handles, factors), rest = mine[0], mine[1:5]
                everyone = mesh.exchange([((tuple(h if r == j else None for r, h in enumerate(handles)), factors),) + rest
                                          for j in range(self.world)])
                self._took("exchange", t0)
                self.reduce_apply(everyone, lr)
                t0 = _clock()
                # every lookup of this update is done: frozen tables' inserts (into our share of shared
                # tables) and label counts now, so the barrier below also covers them
                self.apply_facts(merge_facts([o[3] for o in everyone]))
                t1 = _clock()
                self._took("upkeep", t0, t1)
                if self.balanced and update % BALANCE_EVERY == BALANCE_EVERY - 1:
                    # the barrier carries every owner's update seconds of the window
                    seconds = mesh.exchange([self.balance_cpu] * self.world)
                    self.balance_cpu = 0.0
                    self.rebalance(seconds)
                else:
                    mesh.barrier()                        # every owner's rows are updated
                self._took("exchange", t1)
                t0 = _clock()
                if hasattr(self.ex, "after_step"):        # rebuilds read every owner's rows: after it
                    self.ex.after_step(epoch, index, per_epoch)
                self._took("upkeep", t0)
                out.append((None,) + mine[1:])
        except BaseException:
            mesh.close()                                  # the others' reads end now, not at the timeout
            raise
        return out

    def finish(self, prev) -> None:
        """Install the other owners' new rows, then the global batch's facts and the LSH upkeep.
        `prev` = (every owner's new rows (or handles), every worker's grads_step output (or handles),
        epoch, index in epoch, updates per epoch)."""
        rows, grads_outs, epoch, index, per_epoch = prev
        t0 = _clock()
        facts = merge_facts([o[3] for o in self.get(list(grads_outs))])
        owners = [r for r in range(len(rows)) if r != self.rank]
        for r, new in zip(owners, self.get([rows[r] for r in owners])):
            for (layer, t), g in new.items():
                W = self.state.params[layer][t]
                if g.rows is None:
                    lo, hi = self.bounds[(layer, t)][r]
                    W[lo:hi] = g.values
                else:
                    W[g.rows] = g.values
                self.bytes["received"] += g.nbytes
        self._took("exchange", t0)
        t0 = _clock()                            # upkeep: the global batch's label counts and table inserts,
        self.apply_facts(facts)                  # then the schedule's rebuilds
        if hasattr(self.ex, "after_step"):       # the single-machine trainer's upkeep, in global updates
            self.ex.after_step(epoch, index, per_epoch)
        self._took("upkeep", t0)

    def apply_facts(self, facts: dict) -> None:
        """Label counts and frozen tables' insertions of the global batch, the same on every replica."""
        labels = facts.get("labels")
        if labels is not None and labels.size:
            counts = self.state.params[self.output["name"]]["label_count"]
            counts += np.bincount(labels, minlength=counts.size).astype(np.float32)     # as train_step adds them
        for name, (ids, buckets) in sorted((facts.get("inserts") or {}).items()):
            if ids.size:
                index = self.state.lsh[name]
                apply = self.ex.insert_apply(name, index) if hasattr(self.ex, "insert_apply") else None
                # a missed label is in none of its probed buckets (the lookups ran on these tables,
                # which nothing changed since): no table is read, only our share of them written
                index.insert_tables(ids, buckets, (self.seed, int(self.state.step), 0x1D5),
                                    self.table_share.get(name), apply=apply)

    # ------------------------------------------------------------------ state
    def get_state(self):
        """(weights and tables: rank 0 only, else None; this worker's moment shards). Workers sharing
        the machine's file: rank 0 sends ("shared", params with None for every tensor in the file,
        {layer: (index meta, index arrays but the shared tables)}, step) and nobody sends moments;
        the driver reads the rest from the file (`assemble_shared`), not through Ray."""
        if self.shared:
            if self.rank != 0:
                return None, None
            params = {layer: {t: (np.array(a) if t in NOT_TRAINED else None) for t, a in ts.items()}
                      for layer, ts in self.state.params.items()}
            lsh = {n: (idx.meta(), {k: np.array(a) for k, a in idx.arrays().items()
                                    if n not in self.table_share or k not in ("tables", "counts")})
                   for n, idx in (self.state.lsh or {}).items()}
            return ("shared", params, lsh, int(self.state.step)), None
        full = portable_state(self.state) if self.rank == 0 else None
        return full, (self.shard.m, self.shard.v)

    def _took(self, phase: str, start: tuple, end: tuple | None = None) -> None:
        """Add a phase's wall seconds and CPU seconds (this thread's: the kernels run on it with one
        thread per worker) from `start` (a _clock()) to `end` (default now)."""
        end = end or _clock()
        self.seconds[phase] += end[0] - start[0]
        self.cpu[phase] += end[1] - start[1]

    def ping(self) -> int:
        return self.rank

    def timings(self) -> dict:
        """Seconds on gradients, exchange (put, fetch, install), the update of our rows and LSH upkeep;
        bytes this worker sent (parts put, new rows times the workers fetching them) and received; `cpu`:
        CPU seconds of the worker's process since its first epoch started (wall seconds on a loaded
        machine include waiting for a core, CPU seconds do not)."""
        return dict(self.seconds, **self.bytes, **{f"cpu_{k}": v for k, v in self.cpu.items()},
                    cpu=time.process_time() - self.cpu_start)


def _own_copy(a: np.ndarray) -> np.ndarray:
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def assemble_shared(light: tuple, arrays: dict, state_cls, copy: bool = True):
    """The single-machine state of workers sharing one machine's file: rank 0's `get_state` (tensors
    not in the file, LSH meta) and copies of the file's tensors, moments and tables (`arrays`, the
    driver's map of it; the workers are idle between calls, so nothing is written meanwhile).
    copy=False (after the last update, when no worker writes the file again): the file's own arrays,
    which the driver's map keeps valid after the file is deleted (copying ~0.6 GB of 20ng_nextword's
    weights and moments took ~0.6 s, mostly first touches of fresh pages)."""
    take = _own_copy if copy else (lambda a: a)
    _, params_in, lsh_in, step = light
    params, m, v = {}, {}, {}
    for layer, ts in params_in.items():
        for t, a in ts.items():
            if a is None:
                params.setdefault(layer, {})[t] = take(arrays[(layer, t)])
                m.setdefault(layer, {})[t] = take(arrays[(layer, t, "m")])
                v.setdefault(layer, {})[t] = take(arrays[(layer, t, "v")])
            else:                                    # not trained (label_count): zero moments, as ModelState.init
                params.setdefault(layer, {})[t] = aligned_copy(a)
                m.setdefault(layer, {})[t] = np.zeros_like(a)
                v.setdefault(layer, {})[t] = np.zeros_like(a)
    lsh = {}
    for name, (meta, arrs) in lsh_in.items():
        if "tables" not in arrs:
            arrs = dict(arrs, tables=np.array(arrays[(name, TABLES)]), counts=np.array(arrays[(name, COUNTS)]))
        lsh[name] = LSHIndex.from_arrays(meta, arrs)
    return state_cls(params=params, m=m, v=v, step=int(step), lsh=lsh)


def assemble_state(full, shards: list):
    """The single-machine state from rank 0's weights and every worker's moment shards (row order);
    tensors that are not trained (label_count) get zero moments, as ModelState.init gives them."""
    m, v, params = {}, {}, {}
    for layer, ts in full.params.items():
        params[layer] = {t: aligned_copy(np.array(a)) for t, a in ts.items()}    # ours, writeable
        for t, a in ts.items():
            for moments, which in ((m, 0), (v, 1)):
                if t in NOT_TRAINED:
                    moments.setdefault(layer, {})[t] = np.zeros_like(a)
                else:
                    moments.setdefault(layer, {})[t] = aligned_copy(np.concatenate([s[which][layer][t] for s in shards]))
    return type(full)(params=params, m=m, v=v, step=int(full.step), lsh=copy.deepcopy(full.lsh))
