"""Backward kernels of `fc`, fused with the optimizer update of the rows they touch.

Gradient accumulation across threads (DESIGN.md section 3, the race-free variant): after the forward
pass the batch's active sets are inverted (neuron -> the flat positions (b, k) where it is active, in
increasing order; `invert` below). Weight-gradient work is then split by ranges of *unique neurons*:
each thread owns its rows, sums their gradient in a fixed order into a per-thread scratch row, and
applies lazy Adam / SGD to that row at once. No races, no per-thread copy of a 670k-row gradient,
no gradient buffer at all, and results that do not depend on the thread count.
"""
from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as llir

from boltc.lower.builder import F32, I32, I64, Kernel, KernelModule
from boltc.lower.fc import active_dot, lookahead, prefetch_row
from boltc.plan.moments import moment_dtypes, moment_kind

# Rows the update kernels prefetch (fc.prefetch_row: first 1 KB into L2), PREFETCH_ROWS unique neurons
# (or features) ahead. Measured on the 670k chain, kernels alone, with and without the hints
# (benchmarks/train_step_ab.py, docs/native.md): the output's fused update 1.10x with W rows, 1.16x with
# W, m and v rows; the first layer's update 1.20x; the neuron-order forward (its own hint) 1.4x; the
# step 1.10-1.15x, 1.11-1.20x with W, m, v also 64-byte aligned. The hints change no arithmetic: the same
# bits with and without them, on aligned and misaligned rows (tests/test_prefetch_align.py).
UPDATE_PREFETCH = ("W", "m", "v")
# hyper-parameter array layout (float32), filled by the runtime each step
HYPER = ("lr", "beta1", "beta2", "eps", "bc1", "bc2", "momentum")
I16 = llir.IntType(16)


@dataclass(frozen=True)
class UpdateSpec:
    """What one update kernel applies: the optimizer, how the moments of the layer's weight matrix and
    of its bias are stored ("f32" or "bf16"), and AdamW's decoupled weight decay (a plan constant,
    applied to the weight matrix only, as runtime/exec/optim.py)."""
    optimizer: str
    moments_w: str = "f32"
    moments_b: str = "f32"
    weight_decay: float = 0.0


def update_spec(plan: dict, layer: dict) -> UpdateSpec:
    train = plan.get("train", {})
    dtypes = moment_dtypes(plan)
    return UpdateSpec(train.get("optimizer", "adam"), moment_kind(dtypes, layer["name"], "W"),
                      moment_kind(dtypes, layer["name"], "b"), float(train.get("weight_decay", 0.0) or 0.0))


def _spec(optimizer) -> UpdateSpec:
    return optimizer if isinstance(optimizer, UpdateSpec) else UpdateSpec(optimizer)


def act_grad(k: Kernel, act_out, dh, activation: str):
    """d(pre-activation) from d(post-activation) dh and the post-activation value act_out."""
    if activation in ("linear", None):
        return dh
    if activation == "relu":
        return k.select(k.fcmp(">", act_out, k.f32(0.0)), dh, k.f32(0.0))
    if activation == "sigmoid":
        return k.b.fmul(dh, k.b.fmul(act_out, k.b.fsub(k.f32(1.0), act_out)))
    if activation == "tanh":
        return k.b.fmul(dh, k.b.fsub(k.f32(1.0), k.b.fmul(act_out, act_out)))
    raise ValueError(f"no backward lowering for activation {activation!r}")


def input_grad(km: KernelModule, name: str, in_dim: int, k_active: int, gather: bool,
               in_activation: str) -> None:
    """dx[b, :] = act'(x[b, :]) * sum_k grad[b, k] * W[n, :],  n = ids[b, k] or k (out-major W).

    Split by examples: every thread owns its rows of dx, so the result is thread-count independent."""
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("grad", "ptr"), ("ids", "ptr"), ("W", "ptr"),
                         ("x", "ptr"), ("dx", "ptr")])
    a = k.arg
    IN, K = k.i64(in_dim), k.i64(k_active)
    with k.loop(a["b0"], a["b1"], "b") as b:
        xb = k.mul(b, IN)
        gb = k.mul(b, K)
        with k.loop(0, in_dim, "j0") as j:
            k.st(a["dx"], k.add(xb, j), k.f32(0.0))
        with k.loop(0, k_active, "k") as kk:
            g = k.ld(a["grad"], k.add(gb, kk))
            n = k.ld_i32_as_i64(a["ids"], k.add(gb, kk)) if gather else kk
            wb = k.mul(n, IN)
            with k.loop(0, in_dim, "j") as j:
                # no reassoc: with it LLVM vectorizes across the K neurons (one gather per element of
                # the row) instead of along the row; in order, each dx row is an axpy per neuron
                o = k.add(xb, j)
                k.st(a["dx"], o, k.b.fadd(k.ld(a["dx"], o), k.b.fmul(g, k.ld(a["W"], k.add(wb, j)), flags=("contract",)),
                                          flags=("contract",)))
        if in_activation not in ("linear", None):
            with k.loop(0, in_dim, "j2") as j:
                o = k.add(xb, j)
                k.st(a["dx"], o, act_grad(k, k.ld(a["x"], o), k.ld(a["dx"], o), in_activation))
    k.ret()


def invert(km: KernelModule, name: str, dim: int) -> None:
    """Counting sort of n neuron ids (int32) into segments: serial (it is a few ms at 670k).

    Outputs: uniq[u] (increasing ids), seg[u]..seg[u+1] the positions in pos, pos = flat positions
    in increasing order within each neuron, nuniq[0] = number of unique ids.
    counts (dim int32) must be zero on entry and is zero again on exit; offs is dim int64 scratch.
    No branch per id or per neuron (as `invert_range`): the count pass only counts, and the scan over
    the dim counters writes every neuron's segment start and advances only on a used one (a branch
    there was mispredicted about every other neuron: 0.83 ms against 0.40 for 128 x 500 ids of 100k,
    one core); uniq is written in place (its slot's old value kept for an unused neuron), so it
    needs no slot beyond n."""
    k = km.kernel(name, [("ids", "ptr"), ("n", "i64"), ("counts", "ptr"), ("offs", "ptr"),
                         ("uniq", "ptr"), ("seg", "ptr"), ("pos", "ptr"), ("nuniq", "ptr")])
    a = k.arg
    one32 = k.b.trunc(k.i64(1), I32)
    with k.loop(0, a["n"], "p") as p:
        n = k.ld_i32_as_i64(a["ids"], p)
        k.st(a["counts"], n, k.b.add(k.ld(a["counts"], n, I32), one32))
    # segments in increasing neuron order (a scan of `dim` counters): the update passes then sweep
    # W, m and v in address order, which the hardware prefetcher streams at memory bandwidth
    run = k.var(I64, k.i64(0))
    u = k.var(I64, k.i64(0))
    last = k.select(k.icmp(">", a["n"], k.i64(0)), k.b.sub(a["n"], k.i64(1)), k.i64(0))
    with k.loop(0, dim, "nn") as n:
        c = k.b.sext(k.ld(a["counts"], n, I32), I64)
        used = k.icmp(">", c, k.i64(0))
        slot = k.select(k.icmp("<", k.get(u), last), k.get(u), last)
        k.st(a["uniq"], slot, k.select(used, k.b.trunc(n, I32), k.ld(a["uniq"], slot, I32)))
        k.st(a["seg"], k.get(u), k.get(run))
        k.st(a["offs"], n, k.get(run))
        k.set(run, k.add(k.get(run), c))
        k.set(u, k.add(k.get(u), k.b.zext(used, I64)))
        k.st(a["counts"], n, k.b.trunc(k.i64(0), I32))
    k.st(a["seg"], k.get(u), k.get(run))
    with k.loop(0, a["n"], "p2") as p:
        n = k.ld_i32_as_i64(a["ids"], p)
        o = k.ld(a["offs"], n, I64)
        k.st(a["pos"], o, k.b.trunc(p, I32))
        k.st(a["offs"], n, k.add(o, k.i64(1)))
    k.st(a["nuniq"], k.i64(0), k.get(u))
    k.ret()


def invert_range(km: KernelModule, name: str) -> None:
    """`invert` restricted to the ids in [lo, hi): what a row owner of a data-parallel run needs from
    the whole batch's active sets (or features). The same uniq, the same positions per id in the same
    (increasing) order as `invert`'s [u0, u1) slice of the ids in range, with seg counted from 0.
    No branch per id: an id outside the range counts into a spare slot (span = hi - lo) and its
    positions land in pos after the range's (select, not a branch); the scan over the span writes
    every slot's uniq and seg entry and advances only on a used one.
    counts (span + 1 int32) must be zero on entry and is zero again on exit; offs is span + 1 int64
    scratch; uniq and seg hold min(span, n) + 1 entries, pos n."""
    k = km.kernel(name, [("ids", "ptr"), ("n", "i64"), ("lo", "i64"), ("hi", "i64"), ("counts", "ptr"),
                         ("offs", "ptr"), ("uniq", "ptr"), ("seg", "ptr"), ("pos", "ptr"), ("nuniq", "ptr")])
    a = k.arg
    span = k.b.sub(a["hi"], a["lo"])
    one32 = k.b.trunc(k.i64(1), I32)

    def slot(p):
        c = k.b.sub(k.ld_i32_as_i64(a["ids"], p), a["lo"])
        return k.select(k.b.icmp_unsigned("<", c, span), c, span)

    with k.loop(0, a["n"], "p") as p:
        s = slot(p)
        k.st(a["counts"], s, k.b.add(k.ld(a["counts"], s, I32), one32))
    run = k.var(I64, k.i64(0))
    u = k.var(I64, k.i64(0))
    with k.loop(0, span, "nn") as n:
        c = k.b.sext(k.ld(a["counts"], n, I32), I64)
        k.st(a["uniq"], k.get(u), k.b.trunc(k.add(n, a["lo"]), I32))
        k.st(a["seg"], k.get(u), k.get(run))
        k.st(a["offs"], n, k.get(run))
        k.set(run, k.add(k.get(run), c))
        k.set(u, k.add(k.get(u), k.b.zext(k.icmp(">", c, k.i64(0)), I64)))
        k.st(a["counts"], n, k.b.trunc(k.i64(0), I32))
    k.st(a["seg"], k.get(u), k.get(run))
    k.st(a["offs"], span, k.get(run))                 # out-of-range positions after the range's
    k.st(a["counts"], span, k.b.trunc(k.i64(0), I32))
    with k.loop(0, a["n"], "p2") as p:
        s = slot(p)
        o = k.ld(a["offs"], s, I64)
        k.st(a["pos"], o, k.b.trunc(p, I32))
        k.st(a["offs"], s, k.add(o, k.i64(1)))
    k.st(a["nuniq"], k.i64(0), k.get(u))
    k.ret()


def _hyper(k: Kernel):
    return {h: k.ld(k.arg["hyper"], k.i64(i)) for i, h in enumerate(HYPER)}


def load_bf16(k: Kernel, ptr, idx):
    """A bfloat16 (uint16 bits) widened to float32 exactly: the bits become the float's top half."""
    bits = k.b.zext(k.ld(ptr, idx, I16), I32)
    return k.b.bitcast(k.b.shl(bits, llir.Constant(I32, 16)), F32)


def store_bf16(k: Kernel, ptr, idx, x):
    """float32 -> bfloat16 rounded to nearest, ties to even (runtime/exec/optim.py `bf16_from_f32`, the
    same integer steps); returns the stored value widened back. Branch-free, so the loop vectorizes."""
    c = lambda v: llir.Constant(I32, v)                                   # noqa: E731
    b = k.b.bitcast(x, I32)
    lsb = k.b.and_(k.b.lshr(b, c(16)), c(1))
    rounded = k.b.lshr(k.b.add(b, k.b.add(c(0x7FFF), lsb)), c(16))
    is_nan = k.b.icmp_unsigned(">", k.b.and_(b, c(0x7FFFFFFF)), c(0x7F800000))
    bits = k.b.select(is_nan, k.b.or_(k.b.lshr(b, c(16)), c(0x40)), rounded)
    k.st(ptr, idx, k.b.trunc(bits, I16))
    return k.b.bitcast(k.b.shl(bits, c(16)), F32)


def _load_moment(k: Kernel, ptr, idx, kind: str):
    return load_bf16(k, ptr, idx) if kind == "bf16" else k.ld(ptr, idx)


def _store_moment(k: Kernel, ptr, idx, x, kind: str):
    """Store a new moment; returns the value the rest of the update uses (the stored one)."""
    if kind == "bf16":
        return store_bf16(k, ptr, idx, x)
    k.st(ptr, idx, x)
    return x


def _ahead_neuron(k: Kernel, u):
    """The unique neuron PREFETCH_ROWS positions after u, clamped to the slice's last one (u1 - 1):
    the lookahead never reads uniq outside [u0, u1)."""
    return k.ld_i32_as_i64(k.arg["uniq"], lookahead(k, u, k.b.sub(k.arg["u1"], k.i64(1))))


def _prefetch_update_rows(k: Kernel, spec: UpdateSpec, which: tuple, row_base, width: int) -> None:
    """Prefetch the rows `which` ("W", "m", "v") an update will read, at row_base (elements)."""
    for t in which:
        if t == "W":
            prefetch_row(k, k.arg["W"], row_base, width)
        elif spec.optimizer == "adam" or t == "m":          # SGD keeps no second moment
            mom = k.arg["mW"] if t == "m" else k.arg["vW"]
            bf16 = spec.moments_w == "bf16" and spec.optimizer == "adam"
            prefetch_row(k, mom, row_base, width, I16 if bf16 else F32)


def _update(k: Kernel, hp, optimizer: str, param, m, v, idx, g, moments: str = "f32",
            weight_decay: float = 0.0) -> None:
    """One element of lazy Adam / SGD: runtime/exec/optim.py's formulas and operation order exactly, one
    rounding per operation (plain fmul/fadd: no `contract`, so never fused into an FMA), so the two
    backends agree bit for bit given the same gradient. `moments`: storage of m and v (Adam)."""
    w = k.ld(param, idx)
    if optimizer == "adam":
        mn = k.b.fadd(k.b.fmul(hp["beta1"], _load_moment(k, m, idx, moments)),
                      k.b.fmul(k.b.fsub(k.f32(1.0), hp["beta1"]), g))
        vn = k.b.fadd(k.b.fmul(hp["beta2"], _load_moment(k, v, idx, moments)),
                      k.b.fmul(k.b.fsub(k.f32(1.0), hp["beta2"]), k.b.fmul(g, g)))
        mn = _store_moment(k, m, idx, mn, moments)
        vn = _store_moment(k, v, idx, vn, moments)
        mhat = k.b.fdiv(mn, hp["bc1"])
        vhat = k.b.fdiv(vn, hp["bc2"])
        step = k.b.fdiv(k.b.fmul(hp["lr"], mhat), k.b.fadd(k.sqrt(vhat), hp["eps"]))
        if weight_decay:
            step = k.b.fadd(step, k.b.fmul(k.b.fmul(hp["lr"], k.f32(weight_decay)), w))
        k.st(param, idx, k.b.fsub(w, step))
    elif optimizer == "sgd":
        mn = k.b.fadd(k.b.fmul(hp["momentum"], k.ld(m, idx)), g)
        k.st(m, idx, mn)
        step = k.b.fmul(hp["lr"], mn)
        if weight_decay:
            step = k.b.fadd(step, k.b.fmul(k.b.fmul(hp["lr"], k.f32(weight_decay)), w))
        k.st(param, idx, k.b.fsub(w, step))
    else:
        raise ValueError(f"no lowering for optimizer {optimizer!r}")


def rows_update_out_major(km: KernelModule, name: str, in_dim: int, k_active: int, gather: bool,
                          bias: bool, optimizer: "str | UpdateSpec", fuse_dx: bool = False,
                          prefetch: tuple = UPDATE_PREFETCH, store_grad: bool = False) -> None:
    """For unique neurons u in [u0, u1): g = sum_{p in seg(u)} grad[p] * x[p // K, :]; update W[n, :]
    (and bias[n] with sum grad[p]). gather=False: dense layer, neuron u = u, positions b*K + u.
    gather=True prefetches the rows named in `prefetch` ("W", "m", "v") of the neuron PREFETCH_ROWS
    unique positions ahead (see UPDATE_PREFETCH); the dense layer's rows are sequential (no hints).
    store_grad=True (data-parallel workers, boltc/lower/split.py): the same sums, stored as gW[u, :]
    and gb[u] instead of applied; `split.rows_apply` then applies a (combined) gradient with the same
    `_update`, so gradient + apply of one batch equals this kernel's fused update bit for bit."""
    spec = _spec(optimizer)
    opt_args = ([("gW", "ptr"), ("gb", "ptr")] if store_grad else
                [("bias", "ptr"), ("mW", "ptr"), ("vW", "ptr"), ("mb", "ptr"), ("vb", "ptr"), ("hyper", "ptr")])
    k = km.kernel(name, [("u0", "i64"), ("u1", "i64"), ("uniq", "ptr"), ("seg", "ptr"), ("pos", "ptr"),
                         ("nrows", "i64"), ("grad", "ptr"), ("x", "ptr"), ("W", "ptr")] + opt_args +
                  [("scratch", "ptr")] + ([("dxbuf", "ptr")] if fuse_dx else []))
    a = k.arg
    IN, K = k.i64(in_dim), k.i64(k_active)
    hp = None if store_grad else _hyper(k)
    if store_grad:
        prefetch = ("W",) if fuse_dx else ()               # no moments read; W only for the input gradient
    with k.loop(a["u0"], a["u1"], "u") as u:
        if gather and prefetch:
            _prefetch_update_rows(k, spec, prefetch, k.mul(_ahead_neuron(k, u), IN), in_dim)
        with k.loop(0, in_dim, "j0") as j:
            k.st(a["scratch"], j, k.f32(0.0))
        gb = k.var(F32, k.f32(0.0))

        def accumulate(p, b, wb=None):
            g = k.ld(a["grad"], p)
            k.set(gb, k.b.fadd(k.get(gb), g))
            xb = k.mul(b, IN)
            with k.loop(0, in_dim, "j") as j:
                k.st(a["scratch"], j, k.fadd(k.ld(a["scratch"], j), k.fmul(g, k.ld(a["x"], k.add(xb, j)))))
                if wb is not None:
                    # the input gradient, from W before its update, into this chunk's own buffer
                    o = k.add(xb, j)
                    k.st(a["dxbuf"], o, k.fadd(k.ld(a["dxbuf"], o), k.fmul(g, k.ld(a["W"], k.add(wb, j)))))

        if gather:
            n = k.ld_i32_as_i64(a["uniq"], u)
            s0 = k.ld(a["seg"], u, I64)
            s1 = k.ld(a["seg"], k.add(u, k.i64(1)), I64)
            with k.loop(s0, s1, "s") as s:
                p = k.ld_i32_as_i64(a["pos"], s)
                accumulate(p, k.b.sdiv(p, K), k.mul(n, IN) if fuse_dx else None)
        else:
            n = u
            with k.loop(0, a["nrows"], "bb") as b:
                accumulate(k.add(k.mul(b, K), u), b)
        if store_grad:
            _store_grad_row(k, u, in_dim, bias, gb)
        else:
            wb = k.mul(n, IN)
            with k.loop(0, in_dim, "j2") as j:
                _update(k, hp, spec.optimizer, a["W"], a["mW"], a["vW"], k.add(wb, j), k.ld(a["scratch"], j),
                        spec.moments_w, spec.weight_decay)
            if bias:
                _update(k, hp, spec.optimizer, a["bias"], a["mb"], a["vb"], n, k.get(gb), spec.moments_b)
    k.ret()


# Unique neurons per block of `rows_update_blocked`: about this many bytes of W rows, so a block's rows stay
# in L2 between its input-gradient and update passes.
BLOCK_W_BYTES = 128 * 1024


def block_rows(in_dim: int) -> int:
    return max(1, BLOCK_W_BYTES // (4 * in_dim))


def rows_update_blocked(km: KernelModule, name: str, in_dim: int, k_active: int, bias: bool,
                        optimizer: "str | UpdateSpec", prefetch: tuple = UPDATE_PREFETCH) -> None:
    """The LSH-sparse layer's fused update + input gradient (`rows_update_out_major` with fuse_dx) in
    blocks of unique neurons, for a W larger than the cache. Same inputs, the same results bit for
    bit (each dxbuf row sums its neurons' terms in increasing neuron order, each weight row its
    positions in increasing order), a different memory order:
    - per block of up to block_rows(in_dim) unique neurons (and at most `cap` positions), the block's
      positions are read once in neuron order: their example b and gradient g go to per-chunk scratch
      `lb`, `lg` (one pass of random reads of grad), and are regrouped by example into `bn`, `bg`
      (a counting sort over the rows, `cnt`: nrows + 1 int64);
    - the input gradient then runs by example: dxbuf[b, :] stays in registers over b's positions in
      the block and the block's W rows (prefetched during the regrouping) come from L2, instead of a
      read-modify-write of a dxbuf row for every position;
    - then each neuron's gradient (from lb, lg: sequential) and its optimizer update, as `upd_active`.
    Measured on 20ng_nextword's output (37,392 x 256, 2,048 active, batch 256): docs/results.md."""
    spec = _spec(optimizer)
    k = km.kernel(name, [("u0", "i64"), ("u1", "i64"), ("uniq", "ptr"), ("seg", "ptr"), ("pos", "ptr"),
                         ("nrows", "i64"), ("grad", "ptr"), ("x", "ptr"), ("W", "ptr"), ("bias", "ptr"),
                         ("mW", "ptr"), ("vW", "ptr"), ("mb", "ptr"), ("vb", "ptr"), ("hyper", "ptr"),
                         ("cap", "i64"), ("scratch", "ptr"), ("dxbuf", "ptr"), ("cnt", "ptr"), ("lb", "ptr"),
                         ("lg", "ptr"), ("bn", "ptr"), ("bg", "ptr")])
    a = k.arg
    IN, K = k.i64(in_dim), k.i64(k_active)
    hp = _hyper(k)
    nbu = block_rows(in_dim)
    u = k.var(I64, a["u0"])
    with k.while_(lambda: k.icmp("<", k.get(u), a["u1"]), "blk"):
        ub0 = k.get(u)
        r0 = k.ld(a["seg"], ub0, I64)
        # the block: at least one neuron, then while under nbu neurons and cap positions
        ub1 = k.var(I64, k.add(ub0, k.i64(1)))

        def grows():
            e = k.get(ub1)
            more = k.b.and_(k.icmp("<", e, a["u1"]), k.icmp("<", k.b.sub(e, ub0), k.i64(nbu)))
            # seg[e + 1] only where e < u1 (seg has u1 + 1 entries from u0): a select does not short-circuit
            nxt = k.ld(a["seg"], k.select(more, k.add(e, k.i64(1)), ub0), I64)
            return k.b.and_(more, k.icmp("<=", k.b.sub(nxt, r0), a["cap"]))

        with k.while_(grows, "grow"):
            k.set(ub1, k.add(k.get(ub1), k.i64(1)))
        ub1 = k.get(ub1)
        with k.loop(0, k.add(a["nrows"], k.i64(1)), "c0") as b:
            k.st(a["cnt"], b, k.i64(0))
        # positions in neuron order -> (b, g) in lb, lg; counts of each example
        with k.loop(ub0, ub1, "ug") as uu:
            prefetch_row(k, a["W"], k.mul(k.ld_i32_as_i64(a["uniq"], uu), IN), in_dim)
            with k.loop(k.ld(a["seg"], uu, I64), k.ld(a["seg"], k.add(uu, k.i64(1)), I64), "sg") as s:
                p = k.ld_i32_as_i64(a["pos"], s)
                b = k.b.sdiv(p, K)
                i = k.b.sub(s, r0)
                k.st(a["lb"], i, k.b.trunc(b, I32))
                k.st(a["lg"], i, k.ld(a["grad"], p))
                c = k.add(b, k.i64(1))
                k.st(a["cnt"], c, k.add(k.ld(a["cnt"], c, I64), k.i64(1)))
        with k.loop(0, a["nrows"], "cs") as b:
            c = k.add(b, k.i64(1))
            k.st(a["cnt"], c, k.add(k.ld(a["cnt"], c, I64), k.ld(a["cnt"], b, I64)))
        # regroup by example (stable: neurons in increasing order within each example)
        with k.loop(ub0, ub1, "up") as uu:
            n32 = k.ld(a["uniq"], uu, I32)
            with k.loop(k.ld(a["seg"], uu, I64), k.ld(a["seg"], k.add(uu, k.i64(1)), I64), "sp") as s:
                i = k.b.sub(s, r0)
                b = k.b.sext(k.ld(a["lb"], i, I32), I64)
                slot = k.ld(a["cnt"], b, I64)
                k.st(a["cnt"], b, k.add(slot, k.i64(1)))
                k.st(a["bn"], slot, n32)
                k.st(a["bg"], slot, k.ld(a["lg"], i))
        # the input gradient by example, from W before its update (cnt[b] is now the end of b's group)
        lo = k.var(I64, k.i64(0))
        with k.loop(0, a["nrows"], "bx") as b:
            hi = k.ld(a["cnt"], b, I64)
            xb = k.mul(b, IN)
            with k.loop(k.get(lo), hi, "sx") as s:
                g = k.ld(a["bg"], s)
                wb = k.mul(k.ld_i32_as_i64(a["bn"], s), IN)
                with k.loop(0, in_dim, "jx") as j:
                    # contract (an FMA, as rows_update_out_major's fused dx) but not reassoc: the row is
                    # a running sum over this loop, and reassociating it would change the order
                    o = k.add(xb, j)
                    term = k.b.fmul(g, k.ld(a["W"], k.add(wb, j)), flags=("contract",))
                    k.st(a["dxbuf"], o, k.b.fadd(k.ld(a["dxbuf"], o), term, flags=("contract",)))
            k.set(lo, hi)
        # each neuron's gradient and update
        with k.loop(ub0, ub1, "uu") as uu:
            if prefetch:
                _prefetch_update_rows(k, spec, prefetch, k.mul(_ahead_neuron(k, uu), IN), in_dim)
            with k.loop(0, in_dim, "j0") as j:
                k.st(a["scratch"], j, k.f32(0.0))
            gb = k.var(F32, k.f32(0.0))
            with k.loop(k.ld(a["seg"], uu, I64), k.ld(a["seg"], k.add(uu, k.i64(1)), I64), "su") as s:
                i = k.b.sub(s, r0)
                g = k.ld(a["lg"], i)
                k.set(gb, k.b.fadd(k.get(gb), g))
                xb = k.mul(k.b.sext(k.ld(a["lb"], i, I32), I64), IN)
                with k.loop(0, in_dim, "j") as j:
                    k.st(a["scratch"], j, k.fadd(k.ld(a["scratch"], j), k.fmul(g, k.ld(a["x"], k.add(xb, j)))))
            n = k.ld_i32_as_i64(a["uniq"], uu)
            wb = k.mul(n, IN)
            with k.loop(0, in_dim, "j2") as j:
                _update(k, hp, spec.optimizer, a["W"], a["mW"], a["vW"], k.add(wb, j), k.ld(a["scratch"], j),
                        spec.moments_w, spec.weight_decay)
            if bias:
                _update(k, hp, spec.optimizer, a["bias"], a["mb"], a["vb"], n, k.get(gb), spec.moments_b)
        k.set(u, ub1)
    k.ret()


def _store_grad_row(k: Kernel, u, width: int, bias: bool, gb=None) -> None:
    """store_grad mode: the accumulated row (scratch) into gW[u, :], its bias sum into gb[u]."""
    ub = k.mul(u, k.i64(width))
    with k.loop(0, width, "j2") as j:
        k.st(k.arg["gW"], k.add(ub, j), k.ld(k.arg["scratch"], j))
    if bias:
        k.st(k.arg["gb"], u, k.get(gb))


def rows_update_in_major(km: KernelModule, name: str, dim: int, optimizer: "str | UpdateSpec",
                         prefetch: tuple = UPDATE_PREFETCH, store_grad: bool = False) -> None:
    """Sparse-input layer, W in-major (in_dim, dim): for unique features u in [u0, u1):
    g = sum_{p in seg(u)} values[p] * dz[prow[p], :]; update W[f, :]. (Dense bias: `dense_update`.)
    Touched features are as scattered as the output's neurons: the rows `prefetch` of the feature
    PREFETCH_ROWS unique positions ahead are prefetched the same way.
    store_grad=True: the sums are stored as gW[u, :] instead (see rows_update_out_major)."""
    spec = _spec(optimizer)
    opt_args = [("gW", "ptr")] if store_grad else [("W", "ptr"), ("mW", "ptr"), ("vW", "ptr"), ("hyper", "ptr")]
    k = km.kernel(name, [("u0", "i64"), ("u1", "i64"), ("uniq", "ptr"), ("seg", "ptr"), ("pos", "ptr"),
                         ("prow", "ptr"), ("values", "ptr"), ("dz", "ptr")] + opt_args + [("scratch", "ptr")])
    a = k.arg
    D = k.i64(dim)
    hp = None if store_grad else _hyper(k)
    with k.loop(a["u0"], a["u1"], "u") as u:
        if prefetch and not store_grad:
            _prefetch_update_rows(k, spec, prefetch, k.mul(_ahead_neuron(k, u), D), dim)
        with k.loop(0, dim, "j0") as j:
            k.st(a["scratch"], j, k.f32(0.0))
        f = k.ld_i32_as_i64(a["uniq"], u)
        s0 = k.ld(a["seg"], u, I64)
        s1 = k.ld(a["seg"], k.add(u, k.i64(1)), I64)
        with k.loop(s0, s1, "s") as s:
            p = k.ld_i32_as_i64(a["pos"], s)
            val = k.ld(a["values"], p)
            zb = k.mul(k.ld_i32_as_i64(a["prow"], p), D)
            with k.loop(0, dim, "j") as j:
                k.st(a["scratch"], j, k.fadd(k.ld(a["scratch"], j), k.fmul(val, k.ld(a["dz"], k.add(zb, j)))))
        if store_grad:
            _store_grad_row(k, u, dim, False)
        else:
            wb = k.mul(f, D)
            with k.loop(0, dim, "j2") as j:
                _update(k, hp, spec.optimizer, a["W"], a["mW"], a["vW"], k.add(wb, j), k.ld(a["scratch"], j),
                        spec.moments_w, spec.weight_decay)
    k.ret()


def dense_update(km: KernelModule, name: str, optimizer: "str | UpdateSpec", tensor: str = "b") -> None:
    """param[i] updated with grad[i] for i in [i0, i1) (biases of dense layers: every entry touched).
    `tensor` says which of the spec's moment storages applies ("b", or "W": decayed like a weight)."""
    spec = _spec(optimizer)
    moments = spec.moments_w if tensor == "W" else spec.moments_b
    decay = spec.weight_decay if tensor == "W" else 0.0
    k = km.kernel(name, [("i0", "i64"), ("i1", "i64"), ("param", "ptr"), ("grad", "ptr"), ("m", "ptr"),
                         ("v", "ptr"), ("hyper", "ptr")])
    a = k.arg
    hp = _hyper(k)
    with k.loop(a["i0"], a["i1"], "i") as i:
        _update(k, hp, spec.optimizer, a["param"], a["m"], a["v"], i, k.ld(a["grad"], i), moments, decay)
    k.ret()


def fwd_by_neuron(km: KernelModule, name: str, in_dim: int, k_active: int, bias: bool,
                  prefetch: bool = True) -> None:
    """The active-set forward in neuron order: for unique neurons u in [u0, u1) and each position p
    where it is active, out[p] = bias[n] + dot(h[p // K, :], W[n, :]). Each weight row is read once per
    batch, in address order (h, B x in_dim, stays in cache); each out[p] is written by one thread and
    computed exactly as the gather kernel computes it. The rows are in address order but sparse (479k
    of 670k at the 670k shape, gaps the hardware prefetcher does not follow): the row of the unique
    neuron PREFETCH_ROWS ahead is prefetched as in the gather (hints only: same bits)."""
    k = km.kernel(name, [("u0", "i64"), ("u1", "i64"), ("uniq", "ptr"), ("seg", "ptr"), ("pos", "ptr"),
                         ("h", "ptr"), ("W", "ptr"), ("bias", "ptr"), ("out", "ptr")])
    a = k.arg
    IN, K = k.i64(in_dim), k.i64(k_active)
    with k.loop(a["u0"], a["u1"], "u") as u:
        if prefetch:
            prefetch_row(k, a["W"], k.mul(_ahead_neuron(k, u), IN), in_dim)
        n = k.ld_i32_as_i64(a["uniq"], u)
        wb = k.mul(n, IN)
        bn = k.ld(a["bias"], n) if bias else None
        s0 = k.ld(a["seg"], u, I64)
        s1 = k.ld(a["seg"], k.add(u, k.i64(1)), I64)
        with k.loop(s0, s1, "s") as s:
            p = k.ld_i32_as_i64(a["pos"], s)
            hb = k.mul(k.b.sdiv(p, K), IN)
            v = active_dot(k, a["h"], hb, a["W"], wb, in_dim)
            if bias:
                v = k.b.fadd(v, bn)
            k.st(a["out"], p, v)
    k.ret()
