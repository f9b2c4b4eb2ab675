"""Forward kernels of `fc` / `embedding`: sparse input x in-major weights, dense input x out-major weights
over an active set (or over every neuron), activations, softmax + cross-entropy gradient on the active set.

Each generator adds one kernel specialised to the layer's shapes (constants) to a KernelModule.
Row-major buffers; B = batch, K = active neurons per example.
"""
from __future__ import annotations

import llvmlite.ir as ir

from boltc.lower.builder import F32, I32, I64, PTR, VOID, Kernel, KernelModule
from boltc.ops.numeric import smoothing_constants

# Software prefetch of gathered weight rows (dense_fc_fwd with gather=True; sparse_fc_fwd). Measured
# with benchmarks/kernel_fc.py on the 670,091 x 256 output layer (docs/native.md):
# - the kernel is bound by memory latency, not FLOPs: each random 1 KB row is 16-17 cache lines the
#   hardware prefetchers cannot predict, and the out-of-order window covers barely more than one row,
#   so few misses are in flight per core. Prefetching the row PREFETCH_ROWS positions ahead keeps
#   more in flight: 1.9-2.2x faster, 30-32% -> 63-65% of the sequential read bandwidth measured in
#   the same run (two runs, at 49 and 24 GB/s);
# - into L2 (locality 2, `prefetcht1`): into L1 (locality 3) or non-temporal (0) gained nothing, the
#   L1's few fill buffers being the bottleneck those compete for;
# - distances of 8 to 48 rows of 1 KB measured alike; for 256 B rows 16 beat 64: a distance in rows;
# - only the first PREFETCH_ROW_BYTES of a row: longer rows are followed by the hardware's L2 stream
#   prefetcher, and one prefetch per line of a 16 KB row cost 15% when the weights were in cache;
# - plus the row's last element: numpy places arrays 16 bytes past a 64-byte line, so a 1 KB row
#   spans 17 lines, and the 17th would otherwise be a demand miss;
# - computing 2 or 4 rows per iteration (more loads in flight without prefetch) gained at most 10%,
#   nothing on top of prefetching: one row per iteration keeps the vectorizer's reduction order;
# - the row's dot product itself is not the limit: 16 `<16 x float>` FMAs with memory operands
#   against h[b] held in 16 zmm registers (LLVM chains its 4 partial sums into one: ~80 cycles of
#   latency per row, overlapped across rows by out-of-order execution; a row costs ~400 cycles of
#   memory time);
# - W on a 64-byte boundary gains another 12-18% (71-77%); the runtime allocates params and moments
#   so (runtime/exec/state.py aligned_empty, docs/native.md). The kernel must not adapt its sum order to
#   the address: results would then depend on where an array happened to land.
# When the weights fit in cache prefetching costs 0-6% (2,000 x 256); it is always on for gathers
# because the kernel does not know how many rows W has.
PREFETCH_ROWS = 16
PREFETCH_ROW_BYTES = 1024
PREFETCH_LOCALITY = 2           # llvm.prefetch locality: 3 = L1 (t0), 2 = L2 (t1), 0 = non-temporal


def apply_activation(k: Kernel, ptr, base, n: int, activation: str) -> None:
    """In place over ptr[base : base+n]. Softmax is not handled here (it needs the whole row + loss)."""
    if activation in ("linear", "softmax", None):
        return
    with k.loop(0, n, "a") as j:
        idx = k.add(base, j)
        x = k.ld(ptr, idx)
        if activation == "relu":
            y = k.select(k.fcmp(">", x, k.f32(0.0)), x, k.f32(0.0))
        elif activation == "sigmoid":
            y = k.fdiv(k.f32(1.0), k.b.fadd(k.f32(1.0), k.exp(k.b.fneg(x))))
        elif activation == "tanh":
            # tanh(x) = 1 - 2 / (exp(2x) + 1): exact at +-inf, no overflow to NaN
            e = k.exp(k.b.fmul(x, k.f32(2.0)))
            y = k.b.fsub(k.f32(1.0), k.fdiv(k.f32(2.0), k.b.fadd(e, k.f32(1.0))))
        else:
            raise ValueError(f"no lowering for activation {activation!r}")
        k.st(ptr, idx, y)


def prefetch_row(k: Kernel, W, row_base, in_dim: int, elem=F32) -> None:
    """Prefetch (read, into L2) the first PREFETCH_ROW_BYTES of the row starting at W[row_base]
    (elements of type `elem`: float32 weights, or bfloat16 moments as i16): one hint per 64-byte
    line, plus the last element when the whole row is covered (a row that does not start on a line
    boundary spills into one more line)."""
    fn = k.km.intrinsic("llvm.prefetch.p0", VOID, [PTR, I32, I32, I32])
    size = elem.width // 8 if isinstance(elem, ir.IntType) else 4      # FloatType: float32
    covered = min(in_dim, PREFETCH_ROW_BYTES // size)
    offsets = list(range(0, covered, 64 // size))
    if covered == in_dim and in_dim - 1 not in offsets:
        offsets.append(in_dim - 1)
    consts = [ir.Constant(I32, v) for v in (0, PREFETCH_LOCALITY, 1)]   # read, locality, data cache
    for off in offsets:
        k.b.call(fn, [k.addr(W, k.add(row_base, k.i64(off)), elem), *consts])


def lookahead(k: Kernel, i, last):
    """The index PREFETCH_ROWS after i, clamped to `last` (a slice's final index): a prefetch's
    lookahead never reads an index array outside the slice it was given."""
    ahead = k.add(i, k.i64(PREFETCH_ROWS))
    return k.select(k.icmp("<", ahead, last), ahead, last)


def sparse_fc_fwd(km: KernelModule, name: str, dim: int, activation: str, bias: bool,
                  prefetch: bool = True) -> None:
    """out[b, :] = act(bias + sum_p values[p] * W[indices[p], :]) for CSR rows b in [b0, b1).

    W is in-major (in_dim, dim): each nonzero gathers one contiguous weight row (an axpy over dim,
    vectorized without reassociation). The rows are as random as the output layer's (75 of 135,909
    features per example), so the row of the nonzero PREFETCH_ROWS ahead is prefetched the same way:
    1.5-2x on 135,909 x 256 with fresh feature ids per batch (1.6x on the synthetic 670k training
    batches), no change on a 5,000 x 64 table that stays in cache; the hints change no arithmetic."""
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("indptr", "ptr"), ("indices", "ptr"),
                         ("values", "ptr"), ("W", "ptr"), ("bias", "ptr"), ("out", "ptr")])
    a = k.arg
    D = k.i64(dim)
    # the slice's nonzeros are indices[indptr[b0] : indptr[b1]]; the lookahead stops at the last one
    last = k.b.sub(k.ld(a["indptr"], a["b1"], I64), k.i64(1))
    with k.loop(a["b0"], a["b1"], "b") as b:
        ob = k.mul(b, D)
        with k.loop(0, dim, "j") as j:
            init = k.ld(a["bias"], j) if bias else k.f32(0.0)
            k.st(a["out"], k.add(ob, j), init)
        p0 = k.ld(a["indptr"], b, I64)
        p1 = k.ld(a["indptr"], k.add(b, k.i64(1)), I64)
        with k.loop(p0, p1, "p") as p:
            if prefetch:
                prefetch_row(k, a["W"], k.mul(k.ld_i32_as_i64(a["indices"], lookahead(k, p, last)), D), dim)
            f = k.ld_i32_as_i64(a["indices"], p)
            v = k.ld(a["values"], p)
            wb = k.mul(f, D)
            with k.loop(0, dim, "j2") as j:
                o = k.add(ob, j)
                k.st(a["out"], o, k.fadd(k.ld(a["out"], o), k.fmul(v, k.ld(a["W"], k.add(wb, j)))))
        apply_activation(k, a["out"], ob, dim, activation)
    k.ret()


# Rows up to this wide get the explicit vector dot product (Kernel.dot) in the active-set kernels; wider
# ones keep the plain reduction loop, which LLVM vectorizes along the row itself.
EXPLICIT_DOT_MAX = 256


def active_dot(k: Kernel, h, h_base, W, w_base, in_dim: int):
    """dot(h[h_base:], W[w_base:]) over in_dim: the one dot product of an active neuron's logit."""
    if in_dim <= EXPLICIT_DOT_MAX:
        return k.dot(h, h_base, W, w_base, in_dim)
    acc = k.var(F32, k.f32(0.0))
    with k.loop(0, in_dim, "jd") as j:
        k.set(acc, k.fadd(k.get(acc), k.fmul(k.ld(h, k.add(h_base, j)), k.ld(W, k.add(w_base, j)))))
    return k.get(acc)


def dense_fc_fwd(km: KernelModule, name: str, in_dim: int, k_active: int, activation: str, bias: bool,
                 gather: bool, prefetch: bool = True) -> None:
    """out[b, k] = act(bias[n] + dot(h[b, :], W[n, :])) with n = ids[b, k] (gather) or n = k.

    W is out-major (dim, in_dim). The dot product is the float reduction that needs `reassoc`.
    A gather prefetches the row it will need PREFETCH_ROWS positions later (see the note at the top;
    `prefetch=False` builds the kernel without it, for benchmarks/kernel_fc.py to measure the gain).
    Prefetch hints change no arithmetic, but LLVM may vectorize a short row differently around them
    (a 20-wide row: across neurons instead of along the row), so the two builds can differ by
    rounding; for the widths tried in multiples of 8 (8 to 4,096) they gave the same bits."""
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("h", "ptr"), ("ids", "ptr"), ("W", "ptr"),
                         ("bias", "ptr"), ("out", "ptr")])
    a = k.arg
    IN, K = k.i64(in_dim), k.i64(k_active)

    def dot_into(b, kk, n, n_in=in_dim):
        hb = k.mul(b, IN)
        wb = k.mul(n, IN)
        if gather:                # an active set's logit: the same code as fwd_by_neuron (same bits)
            s = active_dot(k, a["h"], hb, a["W"], wb, in_dim)
        else:
            acc = k.var(F32, k.f32(0.0))
            with k.loop(0, n_in, "j") as j:
                prod = k.fmul(k.ld(a["h"], k.add(hb, j)), k.ld(a["W"], k.add(wb, j)))
                k.set(acc, k.fadd(k.get(acc), prod))
            s = k.get(acc)
        if bias:
            s = k.b.fadd(s, k.ld(a["bias"], n))
        k.st(a["out"], k.add(k.mul(b, K), kk), s)

    if gather:
        # ids of this slice are ids[b0*K : b1*K]; the lookahead runs over that flat range (into the
        # next example's ids) and stops at its last entry, never reading past the slice
        last = k.b.sub(k.mul(a["b1"], K), k.i64(1))
        with k.loop(a["b0"], a["b1"], "b") as b:
            ob = k.mul(b, K)
            with k.loop(0, k_active, "k") as kk:
                i = k.add(ob, kk)
                if prefetch:
                    prefetch_row(k, a["W"], k.mul(k.ld_i32_as_i64(a["ids"], lookahead(k, i, last)), IN), in_dim)
                dot_into(b, kk, k.ld_i32_as_i64(a["ids"], i))
    else:
        # every neuron for every example: tile the neurons so a block of weight rows (~32 KB) is read
        # from memory once per slice of examples, not once per example (sequential rows: the hardware
        # prefetcher already streams them)
        block = max(1, min(k_active, (32 * 1024) // max(4, in_dim * 4)))
        nblocks = -(-k_active // block)
        # Short rows with few neurons (seen: in_dim <= 40 with <= 8 neurons) were unrolled whole and
        # LLVM vectorized across *examples*, rounding a row differently in the vector body and in the
        # remainder, i.e. depending on where a thread's slice starts (results changed with the thread
        # count). A runtime bound on the dot product keeps it a loop there; elsewhere the constant
        # stays (a runtime bound cost 2x on 96 x 1000).
        n_in = k.opaque_i64(in_dim, "in") if in_dim <= 64 and block <= 16 else in_dim
        with k.loop(0, nblocks, "blk") as blk:
            n0 = k.mul(blk, k.i64(block))
            n1 = k.add(n0, k.i64(block))
            n1 = k.select(k.icmp("<", n1, K), n1, K)
            with k.loop(a["b0"], a["b1"], "b") as b:
                with k.loop(n0, n1, "k") as kk:
                    dot_into(b, kk, kk, n_in)
    if activation not in ("linear", "softmax", None):
        with k.loop(a["b0"], a["b1"], "ba") as b:
            apply_activation(k, a["out"], k.mul(b, K), k_active, activation)
    k.ret()


def max_and_sum_exp(k: Kernel, z, ob, n, store_shifted: bool):
    """(m, sum_j exp(z[ob + j] - m)) with m = max_j z[ob + j], j < n; with store_shifted the row is
    overwritten by z - m (softmax keeps it to form log p without a second subtraction)."""
    mx = k.var(F32, k.f32(float("-inf")))
    with k.loop(0, n, "k") as kk:
        k.set(mx, k.fmax(k.get(mx), k.ld(z, k.add(ob, kk))))
    m = k.get(mx)
    tot = k.var(F32, k.f32(0.0))
    with k.loop(0, n, "k2") as kk:
        i = k.add(ob, kk)
        shifted = k.b.fsub(k.ld(z, i), m)
        if store_shifted:
            k.st(z, i, shifted)
        k.set(tot, k.fadd(k.get(tot), k.exp(shifted)))
    return m, k.get(tot)


def target_weight(k: Kernel, a, i, l0, l1, ywt):
    """ywt when the neuron at position i (ids[i]) is one of the row's labels lab_indices[l0:l1], else 0:
    a test of the row's label bits (`mark_labels`), O(1) per position instead of a scan of the labels."""
    n = k.ld_i32_as_i64(a["ids"], i)
    word = k.ld(a["marks"], k.b.lshr(n, k.i64(5)), I32)
    bit = k.b.and_(k.b.lshr(word, k.b.trunc(k.b.and_(n, k.i64(31)), I32)), k.b.trunc(k.i64(1), I32))
    return k.select(k.b.icmp_signed("!=", bit, k.b.trunc(k.i64(0), I32)), ywt, k.f32(0.0))


def mark_labels(k: Kernel, a, l0, l1, on: bool) -> None:
    """Set (on) or clear the bits of the row's labels in the per-thread bitset `marks` (dim bits, all
    zero between rows)."""
    with k.loop(l0, l1, "lm" if on else "lc") as li:
        n = k.ld_i32_as_i64(a["lab_indices"], li)
        w = k.b.lshr(n, k.i64(5))
        if on:
            bit = k.b.shl(k.b.trunc(k.i64(1), I32), k.b.trunc(k.b.and_(n, k.i64(31)), I32))
            k.st(a["marks"], w, k.b.or_(k.ld(a["marks"], w, I32), bit))
        else:
            k.st(a["marks"], w, k.b.trunc(k.i64(0), I32))


# the arguments of every fused output-loss kernel (softmax_ce here, sigmoid_bce in lower/loss.py)
# (marks: a per-thread bitset of the layer's width, zero on entry and on exit: see target_weight)
LOSS_PARAMS = [("b0", "i64"), ("b1", "i64"), ("logits", "ptr"), ("ids", "ptr"), ("lab_indptr", "ptr"),
               ("lab_indices", "ptr"), ("scale", "ptr"), ("loss", "ptr"), ("grad", "ptr"), ("marks", "ptr")]


def label_range(k: Kernel, a, b):
    """[l0, l1): row b's entries in the label CSR."""
    return k.ld(a["lab_indptr"], b, I64), k.ld(a["lab_indptr"], k.add(b, k.i64(1)), I64)


def softmax_ce(km: KernelModule, name: str, k_active: int, smoothing: float = 0.0) -> None:
    """Softmax over the active set, per-example loss, and the logits' gradient, for rows [b0, b1).

    logits (B, K) are overwritten with probabilities. Target: the multi-hot labels restricted to the
    active set, each present label weighing 1/|labels| (contract section 4), so
    loss_b = -sum_{k: ids[b,k] in labels} log(p_k) / |labels| and
    grad[b, k] = scale_b * (s_b * p_k - y_k) with s_b = sum_k y_k, scale_b = weight_b / batch
    (scale[b] is given by the caller: importance weight over batch size). Label smoothing e > 0:
    y <- y (1 - e) + e / K on a row with labels (numpy_rules.softmax_cross_entropy, same float32
    constants and order of operations)."""
    k = km.kernel(name, LOSS_PARAMS)
    a = k.arg
    K = k.i64(k_active)
    N = k.opaque_i64(k_active, "k")          # loop bound: see Kernel.opaque_i64
    with k.loop(a["b0"], a["b1"], "b") as b:
        ob = k.mul(b, K)
        _, tot = max_and_sum_exp(k, a["logits"], ob, N, store_shifted=True)
        logtot = k.log(tot)
        l0, l1 = label_range(k, a, b)
        mark_labels(k, a, l0, l1, True)
        nlab = k.b.sitofp(k.b.sub(l1, l0), F32)
        ywt = k.fdiv(k.f32(1.0), k.fmax(nlab, k.f32(1.0)))
        if smoothing:
            keep, spread = smoothing_constants(smoothing, k_active)
            spread_b = k.select(k.fcmp(">", nlab, k.f32(0.0)), k.f32(float(spread)), k.f32(0.0))

            def smooth(y):
                return k.b.fadd(k.b.fmul(y, k.f32(float(keep))), spread_b)
        else:
            def smooth(y):
                return y
        sc = k.ld(a["scale"], b)
        loss = k.var(F32, k.f32(0.0))
        ysum = k.var(F32, k.f32(0.0))
        with k.loop(0, N, "k3") as kk:
            # log p from the shifted logit (not log of a p rounded to zero): finite loss for tiny p;
            # kept in grad until the last loop, so this loop (exp) vectorizes apart from the ordered sums
            i = k.add(ob, kk)
            logp = k.b.fsub(k.ld(a["logits"], i), logtot)
            k.st(a["grad"], i, logp)
            k.st(a["logits"], i, k.exp(logp))
        with k.loop(0, N, "k3s") as kk:
            i = k.add(ob, kk)
            logp = k.ld(a["grad"], i)
            y = smooth(target_weight(k, a, i, l0, l1, ywt))
            k.set(ysum, k.b.fadd(k.get(ysum), y))
            k.set(loss, k.b.fsub(k.get(loss), k.b.fmul(y, logp)))
        k.st(a["loss"], b, k.get(loss))
        s = k.get(ysum)
        with k.loop(0, N, "k4") as kk:
            i = k.add(ob, kk)
            p = k.ld(a["logits"], i)
            y = smooth(target_weight(k, a, i, l0, l1, ywt))
            k.st(a["grad"], i, k.b.fmul(sc, k.b.fsub(k.b.fmul(s, p), y)))
        mark_labels(k, a, l0, l1, False)
    k.ret()


def row_logsumexp(km: KernelModule, name: str, k_active: int) -> None:
    """out[b] = log(sum_k exp(z[b, k])) for rows [b0, b1), max-shifted; no temporaries (predict turns
    its top-k logits into the spec's softmax probabilities with it)."""
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("z", "ptr"), ("out", "ptr")])
    a = k.arg
    K = k.i64(k_active)
    N = k.opaque_i64(k_active, "k")          # loop bound: see Kernel.opaque_i64
    with k.loop(a["b0"], a["b1"], "b") as b:
        ob = k.mul(b, K)
        m, tot = max_and_sum_exp(k, a["z"], ob, N, store_shifted=False)
        k.st(a["out"], b, k.b.fadd(m, k.log(tot)))
    k.ret()
