"""Integer kernels: DWTA hashing, bucket lookup into exactly K de-duplicated active ids, top-k.

They reproduce runtime/lsh/index.py (the spec): the same hash codes bit for bit (DWTA) and the same active
sets up to the random fill (labels first, then bucket contents in table order, de-duplicated; the fill
uses a per-example splitmix64 stream instead of numpy's generator).
"""
from __future__ import annotations

import llvmlite.ir as ir

from boltc.lower.builder import F32, I1, I32, I64, Kernel, KernelModule, symbol

PROBES = 10          # == runtime/lsh/index.py _PROBES
# The training lookup prefetches the bucket it will probe LOOKUP_PREFETCH tables ahead (a hint: the
# tables are MBs of random probes). quickstart's lookup, one thread: 0.62 ms a step without, 0.45 at 8,
# 0.39 at 16 tables ahead.
LOOKUP_PREFETCH = 16


def lower_hash(km: KernelModule, layer: dict, h: dict) -> dict:
    name = layer["name"]
    out = {r: symbol(name, r) for r in ("lookup", "lookup_ranked", "label_hits")}
    lookup(km, out["lookup"], layer["dim"], layer["active"], h["reservoir"])
    label_hits(km, out["label_hits"])
    lookup_ranked(km, out["lookup_ranked"], layer["dim"], layer["active"])
    out["build"] = symbol(name, "build")
    build_tables(km, out["build"], h["tables"], h["range_bits"], h["reservoir"])
    out["insert"] = symbol(name, "insert")
    insert_pairs(km, out["insert"])
    out["hash"] = symbol(name, "hash")
    if h["family"] == "dwta":
        dwta_hash(km, out["hash"], layer["in_dim"], h["tables"], h["hashes"], h["range_bits"],
                  h.get("bin_size", 8))
    else:
        srp_hash(km, out["hash"], layer["in_dim"], h["tables"], h["range_bits"])
    return out


def srp_hash(km: KernelModule, name: str, in_dim: int, tables: int, range_bits: int) -> None:
    """buckets[b, t] for rows x[b, :] (dense, in_dim wide), b in [b0, b1): SRP bits = projection > 0,
    a table's range_bits bits concatenated, low bits first (runtime/lsh/index.py, the spec).

    idx (width, n_hashes) int32 is the LSHIndex's idx transposed, neg (width, n_hashes) uint8 is 1
    where its sign is -1 (a byte, not a float: the whole matrix stays in L1, 20 KB for hybrid.bolt's
    96 x 208; as floats it was read from L2 for every example, 0.8 us an example). With full = 1
    every hash covers every dim in order (idx[w] == w) and x[b, w] is read once for all hashes. Each
    projection is summed in float32 in that order, one add per dim, without reassociation; a term is
    x with its sign bit flipped where neg is 1, exactly sign * x: the same bits as the spec's. The loop
    over hashes is the vectorized one. scratch: n_hashes float32 per thread."""
    n_h = tables * range_bits
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("x", "ptr"), ("idx", "ptr"), ("neg", "ptr"),
                         ("width", "i64"), ("full", "i64"), ("buckets", "ptr"), ("scratch", "ptr")])
    a = k.arg
    acc = a["scratch"]
    I8 = ir.IntType(8)

    def add_term(row, hh, xv):
        flip = k.b.shl(k.b.zext(k.ld(a["neg"], k.add(row, hh), I8), I32), ir.Constant(I32, 31))
        term = k.b.bitcast(k.b.xor(k.b.bitcast(xv, I32), flip), F32)
        k.st(acc, hh, k.b.fadd(k.ld(acc, hh), term))          # plain fadd: one rounding per dim, in order

    with k.loop(a["b0"], a["b1"], "b") as b:
        xb = k.mul(b, k.i64(in_dim))
        with k.loop(0, n_h, "h0") as hh:
            k.st(acc, hh, k.f32(0.0))
        with k.if_else(k.icmp("!=", a["full"], k.i64(0))) as (full, sampled):
            with full:
                with k.loop(0, a["width"], "w") as w:
                    xv = k.ld(a["x"], k.add(xb, w))
                    row = k.mul(w, k.i64(n_h))
                    with k.loop(0, n_h, "h") as hh:
                        add_term(row, hh, xv)
            with sampled:
                with k.loop(0, a["width"], "ws") as w:
                    row = k.mul(w, k.i64(n_h))
                    with k.loop(0, n_h, "hs") as hh:
                        add_term(row, hh, k.ld(a["x"], k.add(xb, k.ld_i32_as_i64(a["idx"], k.add(row, hh)))))
        with k.loop(0, tables, "tb") as tb:
            bits = k.var(I64, k.i64(0))
            with k.loop(0, range_bits, "j") as j:
                hh = k.add(k.mul(tb, k.i64(range_bits)), j)
                bit = k.b.zext(k.fcmp(">", k.ld(acc, hh), k.f32(0.0)), I64)
                k.set(bits, k.b.or_(k.get(bits), k.b.shl(bit, j)))
            k.st(a["buckets"], k.add(k.mul(b, k.i64(tables)), tb), k.b.trunc(k.get(bits), I32))
    k.ret()


# Examples the DWTA kernel hashes together: x is read transposed (in_dim, B + DWTA_LANES), so one bin
# position of one hash is a contiguous vector load across DWTA_LANES examples (the padding columns let
# the last group read whole vectors; their codes are never stored). Per example instead, every bin
# position was a gather of single elements: tiny.bolt's 306 hashes over a 32-wide input cost 1.6-2.2 us
# an example that way.
DWTA_LANES = 16


def dwta_scratch_words(n_hashes: int) -> int:
    """int32 words of per-thread scratch the DWTA kernel needs."""
    return 2 * DWTA_LANES * n_hashes + DWTA_LANES * (n_hashes + 1) + n_hashes


def dwta_hash(km: KernelModule, name: str, in_dim: int, tables: int, hashes: int, range_bits: int,
              bin_size: int) -> None:
    """buckets[b, t] for rows b in [b0, b1) of x, given transposed: xT (in_dim, stride) with
    stride >= b1 + DWTA_LANES (columns past the batch are read, never used).

    idx (bin_size, n_hashes) int32 (the LSHIndex's idx transposed) and probe (PROBES, n_hashes) int32
    come from the LSHIndex (they change on every rehash, so they are arguments, not constants).
    scratch: dwta_scratch_words(n_hashes) int32 per thread. Same codes as the spec (numpy's argmax:
    the first maximum wins; a bin is empty when every entry is exactly 0)."""
    n_h = tables * hashes
    CH = DWTA_LANES
    bits = bin_size.bit_length() - 1
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("xT", "ptr"), ("stride", "i64"), ("idx", "ptr"),
                         ("probe", "ptr"), ("buckets", "ptr"), ("scratch", "ptr")])
    a = k.arg
    zero32 = k.b.trunc(k.i64(0), I32)
    one32 = k.b.trunc(k.i64(1), I32)
    sc = a["scratch"]
    codeL = sc                                                    # (n_h, CH): the group's codes
    emptyL = k.addr(sc, k.i64(CH * n_h), I32)                     # (n_h, CH): its empty flags
    bucketL = k.addr(sc, k.i64(2 * CH * n_h), I32)                # (tables, CH): buckets before densifying
    nemptyL = k.addr(sc, k.i64(2 * CH * n_h + CH * tables), I32)  # (CH,): empty hashes per example
    lst = k.addr(sc, k.i64(2 * CH * n_h + CH * tables + CH), I32)  # (n_h,): a row's empty hashes
    c0v = k.var(I64, a["b0"])
    vf, vi = ir.VectorType(F32, CH), ir.VectorType(I32, CH)
    zero_f, zero_i = ir.Constant(vf, [0.0] * CH), ir.Constant(vi, [0] * CH)
    mask = (1 << range_bits) - 1
    with k.while_(lambda: k.icmp("<", k.get(c0v), a["b1"]), "grp"):
        c0 = k.get(c0v)
        n = k.b.sub(a["b1"], c0)
        n = k.select(k.icmp("<", n, k.i64(CH)), n, k.i64(CH))
        n_empty = k.var(vi, zero_i)
        with k.loop(0, tables, "tb") as tb:
            bucket = zero_i
            for j in range(hashes):
                hh = k.add(k.mul(tb, k.i64(hashes)), k.i64(j))

                # the bin's entries for CH examples at once, kept in vector registers
                def column(w):
                    base = k.add(k.mul(k.ld_i32_as_i64(a["idx"], k.add(hh, k.i64(w * n_h))), a["stride"]), c0)
                    return k.b.load(k.addr(a["xT"], base, F32), typ=vf, align=4)
                best = column(0)
                code = zero_i
                nonzero = k.b.fcmp_unordered("!=", best, zero_f)
                for w in range(1, bin_size):
                    v = column(w)
                    # numpy argmax: the first maximum wins, so only a strictly larger value moves it
                    gt = k.b.fcmp_ordered(">", v, best)
                    code = k.b.select(gt, ir.Constant(vi, [w] * CH), code)
                    best = k.b.select(gt, v, best)
                    nonzero = k.b.or_(nonzero, k.b.fcmp_unordered("!=", v, zero_f))
                empty = k.b.zext(k.b.xor(nonzero, ir.Constant(ir.VectorType(I1, CH), [1] * CH)), vi)
                at = k.mul(hh, k.i64(CH))
                k.b.store(code, k.addr(codeL, at, I32), align=4)
                k.b.store(empty, k.addr(emptyL, at, I32), align=4)
                k.set(n_empty, k.b.add(k.get(n_empty), empty))
                # an empty hash adds code 0 (its densified code comes in the per-example pass)
                code = k.b.select(nonzero, code, zero_i)
                bucket = k.b.add(bucket, k.b.shl(code, ir.Constant(vi, [j * bits] * CH)))
            bucket = k.b.and_(bucket, ir.Constant(vi, [mask] * CH))
            k.b.store(bucket, k.addr(bucketL, k.mul(tb, k.i64(CH)), I32), align=4)
        k.b.store(k.get(n_empty), nemptyL, align=4)
        with k.loop(0, n, "lane") as ln:
            b = k.add(c0, ln)

            def slot(hh):                       # lane ln's entry of hash hh in codeL / emptyL
                return k.add(k.mul(hh, k.i64(CH)), ln)
            ne = k.ld(nemptyL, ln, I32)
            with k.if_else(k.b.icmp_signed("==", ne, zero32)) as (no_empty, some_empty):
                with no_empty:
                    with k.loop(0, tables, "tc") as tb:
                        k.st(a["buckets"], k.add(k.mul(b, k.i64(tables)), tb),
                             k.ld(bucketL, k.add(k.mul(tb, k.i64(CH)), ln), I32))
                with some_empty:
                    # densification: an empty hash borrows the code of probe[t][h] if that one was
                    # non-empty at the start of round t (the spec updates all hashes of a round at
                    # once). Only the row's empty hashes are visited: `lst` holds them; a round first
                    # takes codes (a hash filled in this round is still empty for the others: its
                    # flag is cleared after the scan), then drops the filled ones from the list.
                    cnt = k.var(I64, k.i64(0))
                    with k.loop(0, n_h, "hl") as hh:
                        with k.if_(k.b.icmp_signed("!=", k.ld(emptyL, slot(hh), I32), zero32)):
                            k.st(lst, k.get(cnt), k.b.trunc(hh, I32))
                            k.set(cnt, k.add(k.get(cnt), k.i64(1)))
                    with k.loop(0, PROBES, "t") as t:
                        with k.if_(k.icmp(">", k.get(cnt), k.i64(0))):
                            with k.loop(0, k.get(cnt), "h3") as i:
                                hh = k.ld_i32_as_i64(lst, i)
                                src = k.ld_i32_as_i64(a["probe"], k.add(k.mul(t, k.i64(n_h)), hh))
                                with k.if_(k.b.icmp_signed("==", k.ld(emptyL, slot(src), I32), zero32)):
                                    k.st(codeL, slot(hh), k.ld(codeL, slot(src), I32))
                                    k.st(lst, i, k.b.or_(k.ld(lst, i, I32), ir.Constant(I32, -(1 << 31))))
                            keep = k.var(I64, k.i64(0))
                            with k.loop(0, k.get(cnt), "h4") as i:
                                e = k.ld(lst, i, I32)
                                with k.if_else(k.b.icmp_signed("<", e, zero32)) as (filled, still):
                                    with filled:
                                        h64 = k.b.zext(k.b.and_(e, ir.Constant(I32, (1 << 31) - 1)), I64)
                                        k.st(emptyL, slot(h64), zero32)
                                    with still:
                                        k.st(lst, k.get(keep), e)
                                        k.set(keep, k.add(k.get(keep), k.i64(1)))
                            k.set(cnt, k.get(keep))
                    with k.loop(0, tables, "td") as tb:
                        acc = k.var(I64, k.i64(0))
                        with k.loop(0, hashes, "j") as j:
                            hh = k.add(k.mul(tb, k.i64(hashes)), j)
                            c = k.b.sext(k.ld(codeL, slot(hh), I32), I64)
                            c = k.select(k.b.icmp_signed("!=", k.ld(emptyL, slot(hh), I32), zero32), k.i64(0), c)
                            k.set(acc, k.add(k.get(acc), k.b.shl(c, k.mul(j, k.i64(bits)))))
                        bucket = k.b.and_(k.get(acc), k.i64(mask))
                        k.st(a["buckets"], k.add(k.mul(b, k.i64(tables)), tb), k.b.trunc(bucket, I32))
        k.set(c0v, k.add(c0, k.i64(CH)))
    k.ret()


def _splitmix(k: Kernel, state_slot):
    """Advance a splitmix64 state (an i64 slot) and return the next 64-bit output."""
    s = k.b.add(k.get(state_slot), k.i64(0x9E3779B97F4A7C15 - (1 << 64)))
    k.set(state_slot, s)
    z = k.b.mul(k.b.xor(s, k.b.lshr(s, k.i64(30))), k.i64(0xBF58476D1CE4E5B9 - (1 << 64)))
    z = k.b.mul(k.b.xor(z, k.b.lshr(z, k.i64(27))), k.i64(0x94D049BB133111EB - (1 << 64)))
    return k.b.xor(z, k.b.lshr(z, k.i64(31)))


WEIGHTED_DRAWS = 8       # weighted fill draws per active slot before the fill turns uniform


def _weighted_pick(k: Kernel, cum, guide, u, total, dim: int, out_slot) -> None:
    """out_slot = the first j with cum[j] > u (cum nondecreasing int64, u < total = cum[dim - 1]): numpy's
    searchsorted(cum, u, side="right"), found by a forward scan from guide[u * dim // total], which is
    never past the answer (runtime/lsh/index.py FillTable)."""
    j = k.var(I64, k.ld(guide, k.b.udiv(k.mul(u, k.i64(dim)), total), I64))
    with k.while_(lambda: k.icmp("<=", k.ld(cum, k.get(j), I64), u), "scan"):
        k.set(j, k.add(k.get(j), k.i64(1)))
    k.set(out_slot, k.get(j))


def bucket_lines(reservoir: int) -> list[int]:
    """Offsets (int32 entries) that touch every 64-byte line of a bucket of `reservoir` ids wherever it
    starts: one per 16 entries, and the last."""
    return sorted(set(range(0, reservoir, 16)) | {reservoir - 1})


def lookup(km: KernelModule, name: str, dim: int, k_active: int, reservoir: int = 1) -> None:
    """out[b, :K] = labels of b, then tables[t, buckets[b, t], r] for t, r in order, de-duplicated,
    then random ids, for b in [b0, b1). `marks` is a per-thread bitset of dim bits (int32 words, zero
    on entry and on exit): 84 KB at 670k neurons, so the de-duplication stays in L2; each row clears
    the bits it set. has_labels = 0 skips the labels (inference). The random fill draws from
    splitmix64(seed, b): with ncum = dim, in proportion to the cumulative int64 weights `cum` (a guided
    search; runtime/lsh/index.py FillTable) for the first WEIGHTED_DRAWS * K draws, uniform after that
    (a few dominant weights cannot stall the de-duplication); with any other ncum (0), uniform.
    `reservoir` (the plan's bucket size) places the prefetch hints only: the kernel reads the size it is
    passed."""
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("buckets", "ptr"), ("tables", "ptr"),
                         ("ntables", "i64"), ("nbuckets", "i64"), ("reservoir", "i64"),
                         ("lab_indptr", "ptr"), ("lab_indices", "ptr"), ("has_labels", "i64"),
                         ("seed", "i64"), ("room", "i64"), ("cum", "ptr"), ("guide", "ptr"), ("ncum", "i64"),
                         ("out", "ptr"), ("marks", "ptr")])
    a = k.arg
    K = k.i64(k_active)
    L, NB, R = a["ntables"], a["nbuckets"], a["reservoir"]
    zero32 = k.b.trunc(k.i64(0), I32)
    with k.loop(a["b0"], a["b1"], "b") as b:
        ob = k.mul(b, K)
        cnt = k.var(I64, k.i64(0))

        def offer(n64, cap=K):
            with k.if_(k.icmp("<", k.get(cnt), cap)):
                word = k.b.lshr(n64, k.i64(5))
                bit = k.b.shl(k.b.trunc(k.i64(1), I32), k.b.trunc(k.b.and_(n64, k.i64(31)), I32))
                w = k.ld(a["marks"], word, I32)
                with k.if_(k.b.icmp_signed("==", k.b.and_(w, bit), zero32)):
                    k.st(a["marks"], word, k.b.or_(w, bit))
                    k.st(a["out"], k.add(ob, k.get(cnt)), k.b.trunc(n64, I32))
                    k.set(cnt, k.add(k.get(cnt), k.i64(1)))

        with k.if_(k.icmp("!=", a["has_labels"], k.i64(0))):
            l0 = k.ld(a["lab_indptr"], b, I64)
            l1 = k.ld(a["lab_indptr"], k.add(b, k.i64(1)), I64)
            with k.loop(l0, l1, "l") as li:
                offer(k.ld_i32_as_i64(a["lab_indices"], li))
        # the training reserve (runtime/lsh/index.py training_reserve): bucket contents stop at `room` ids
        # (labels included), the rest of the row is left to the uniform random fill
        after_labels = k.get(cnt)
        cap = k.select(k.icmp(">", a["room"], after_labels), a["room"], after_labels)
        cap = k.select(k.icmp("<", cap, K), cap, K)
        pf = k.km.intrinsic("llvm.prefetch.p0", ir.VoidType(), [ir.PointerType(), I32, I32, I32])
        hint = [ir.Constant(I32, v) for v in (0, 3, 1)]
        with k.loop(0, L, "t") as t:
            with k.if_(k.icmp("<", k.get(cnt), cap)):
                # the bucket LOOKUP_PREFETCH tables ahead, every line of it (a bucket of R int32 spans
                # several): the tables are MBs of random probes (hints only; none once the row is full:
                # tiny.bolt fills its 75 after ~25 of 102 tables)
                ahead = k.add(t, k.i64(LOOKUP_PREFETCH))
                with k.if_(k.icmp("<", ahead, L)):
                    nb = k.ld_i32_as_i64(a["buckets"], k.add(k.mul(b, L), ahead))
                    start = k.mul(k.add(k.mul(ahead, NB), nb), R)
                    for off in bucket_lines(reservoir):
                        k.b.call(pf, [k.addr(a["tables"], k.add(start, k.i64(off)), I32), *hint])
                bucket = k.ld_i32_as_i64(a["buckets"], k.add(k.mul(b, L), t))
                base = k.mul(k.add(k.mul(t, NB), bucket), R)
                with k.loop(0, R, "r") as r:
                    n = k.ld_i32_as_i64(a["tables"], k.add(base, r))
                    with k.if_(k.icmp(">=", n, k.i64(0))):
                        offer(n, cap)
        rng = k.var(I64, k.b.xor(k.b.mul(a["seed"], k.i64(0x2545F4914F6CDD1D)), b))
        draws = k.var(I64, k.i64(0))
        with k.while_(lambda: k.icmp("<", k.get(cnt), K), "fill"):
            r = _splitmix(k, rng)
            pick = k.var(I64, k.b.urem(r, k.i64(dim)))
            weighted = k.b.and_(k.icmp("==", a["ncum"], k.i64(dim)),
                                k.icmp("<", k.get(draws), k.i64(WEIGHTED_DRAWS * k_active)))
            with k.if_(weighted):
                k.set(draws, k.add(k.get(draws), k.i64(1)))
                total = k.ld(a["cum"], k.i64(dim - 1), I64)        # >= dim: every weight is count + 1
                _weighted_pick(k, a["cum"], a["guide"], k.b.urem(r, total), total, dim, pick)
            offer(k.get(pick))
        with k.loop(0, K, "c") as j:                      # leave the bitset empty for the next row
            n = k.ld_i32_as_i64(a["out"], k.add(ob, j))
            k.st(a["marks"], k.b.lshr(n, k.i64(5)), zero32)
    k.ret()


I8 = ir.IntType(8)
MAX_COUNT = 255          # collision counts saturate here (uint8 per neuron: 670 KB per thread at 670k)


def label_hits(km: KernelModule, name: str) -> None:
    """hit[l] = 1 if label l of row b is in any of b's probed buckets tables[t, buckets[b, t], :], else 0,
    for b in [b0, b1): the frozen tables' missed-label test (runtime/lsh/index.py select), which in NumPy
    cost a batch-64 step as much as the lookup itself."""
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("buckets", "ptr"), ("tables", "ptr"),
                         ("ntables", "i64"), ("nbuckets", "i64"), ("reservoir", "i64"),
                         ("lab_indptr", "ptr"), ("lab_indices", "ptr"), ("hit", "ptr")])
    a = k.arg
    L, NB, R = a["ntables"], a["nbuckets"], a["reservoir"]
    with k.loop(a["b0"], a["b1"], "b") as b:
        l0 = k.ld(a["lab_indptr"], b, I64)
        l1 = k.ld(a["lab_indptr"], k.add(b, k.i64(1)), I64)
        with k.loop(l0, l1, "l") as li:
            lid = k.ld(a["lab_indices"], li, I32)
            found = k.var(I32, k.b.trunc(k.i64(0), I32))
            with k.loop(0, L, "t") as t:
                bucket = k.ld_i32_as_i64(a["buckets"], k.add(k.mul(b, L), t))
                base = k.mul(k.add(k.mul(t, NB), bucket), R)
                with k.loop(0, R, "r") as r:
                    same = k.b.icmp_signed("==", k.ld(a["tables"], k.add(base, r), I32), lid)
                    k.set(found, k.b.or_(k.get(found), k.b.zext(same, I32)))
            k.st(a["hit"], li, k.get(found))
    k.ret()


def lookup_ranked(km: KernelModule, name: str, dim: int, k_active: int) -> None:
    """Inference lookup (runtime/lsh/index.py LSHIndex.rank_by_collisions): out[b, :K] = the distinct ids of
    b's probed buckets, most collisions across the L tables first, ties in order of first appearance
    (table order), cut to K, then random ids. Per-thread scratch: `counts` (dim bytes, zero on entry
    and exit), `touched` (L * reservoir int32), `hist` (256 int64). Counting sort by count: O(L R + K)
    per example, no comparison sort."""
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("buckets", "ptr"), ("tables", "ptr"),
                         ("ntables", "i64"), ("nbuckets", "i64"), ("reservoir", "i64"),
                         ("seed", "i64"), ("out", "ptr"), ("counts", "ptr"), ("touched", "ptr"),
                         ("hist", "ptr")])
    a = k.arg
    K = k.i64(k_active)
    L, NB, R = a["ntables"], a["nbuckets"], a["reservoir"]
    zero8, one8 = ir.Constant(I8, 0), ir.Constant(I8, 1)

    def count_of(n64):
        return k.b.zext(k.ld(a["counts"], n64, I8), I64)

    with k.loop(a["b0"], a["b1"], "b") as b:
        ob = k.mul(b, K)
        nt = k.var(I64, k.i64(0))
        with k.loop(0, L, "t") as t:                        # count collisions, remember first sightings
            bucket = k.ld_i32_as_i64(a["buckets"], k.add(k.mul(b, L), t))
            base = k.mul(k.add(k.mul(t, NB), bucket), R)
            with k.loop(0, R, "r") as r:
                n = k.ld_i32_as_i64(a["tables"], k.add(base, r))
                with k.if_(k.icmp(">=", n, k.i64(0))):
                    c = count_of(n)
                    with k.if_(k.icmp("==", c, k.i64(0))):
                        k.st(a["touched"], k.get(nt), k.b.trunc(n, I32))
                        k.set(nt, k.add(k.get(nt), k.i64(1)))
                    with k.if_(k.icmp("<", c, k.i64(MAX_COUNT))):
                        k.st(a["counts"], n, k.b.trunc(k.add(c, k.i64(1)), I8))
        with k.loop(0, MAX_COUNT + 1, "h0") as c:
            k.st(a["hist"], c, k.i64(0))
        with k.loop(0, k.get(nt), "h1") as i:
            c = count_of(k.ld_i32_as_i64(a["touched"], i))
            k.st(a["hist"], c, k.add(k.ld(a["hist"], c, I64), k.i64(1)))
        run = k.var(I64, k.i64(0))                          # start offset of each count, descending
        with k.loop(0, MAX_COUNT, "h2") as i:
            c = k.b.sub(k.i64(MAX_COUNT), i)
            h = k.ld(a["hist"], c, I64)
            k.st(a["hist"], c, k.get(run))
            k.set(run, k.add(k.get(run), h))
        with k.loop(0, k.get(nt), "p") as i:                # stable placement: first sightings in order
            n = k.ld_i32_as_i64(a["touched"], i)
            c = count_of(n)
            pos = k.ld(a["hist"], c, I64)
            k.st(a["hist"], c, k.add(pos, k.i64(1)))
            with k.if_(k.icmp("<", pos, K)):
                k.st(a["out"], k.add(ob, pos), k.b.trunc(n, I32))
        with k.loop(0, k.get(nt), "z") as i:                # counts now mark only the chosen ids
            k.st(a["counts"], k.ld_i32_as_i64(a["touched"], i), zero8)
        ntv = k.get(nt)
        cnt = k.var(I64, k.select(k.icmp("<", ntv, K), ntv, K))
        with k.loop(0, k.get(cnt), "m") as j:
            k.st(a["counts"], k.ld_i32_as_i64(a["out"], k.add(ob, j)), one8)
        rng = k.var(I64, k.b.xor(k.b.mul(a["seed"], k.i64(0x2545F4914F6CDD1D)), b))
        with k.while_(lambda: k.icmp("<", k.get(cnt), K), "fill"):
            n = k.b.urem(_splitmix(k, rng), k.i64(dim))
            with k.if_(k.icmp("==", count_of(n), k.i64(0))):
                k.st(a["counts"], n, one8)
                k.st(a["out"], k.add(ob, k.get(cnt)), k.b.trunc(n, I32))
                k.set(cnt, k.add(k.get(cnt), k.i64(1)))
        with k.loop(0, K, "c") as j:                        # leave the counts zero for the next row
            k.st(a["counts"], k.ld_i32_as_i64(a["out"], k.add(ob, j)), zero8)
    k.ret()


def topk(km: KernelModule, name: str, k_in: int, gather: bool) -> None:
    """The k_out best scores of each row, descending (ties: the earlier position first, as a stable
    sort), for b in [b0, b1). n = ids[b, j] (gather) or j. With use_mask, neurons whose mask[n] == 0
    are skipped (never-seen labels, see runtime/exec/interp.py). Rows with fewer candidates get id -1."""
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("scores", "ptr"), ("ids", "ptr"), ("mask", "ptr"),
                         ("use_mask", "i64"), ("kout", "i64"), ("out_ids", "ptr"), ("out_scores", "ptr")])
    a = k.arg
    K, KO = k.i64(k_in), a["kout"]
    with k.loop(a["b0"], a["b1"], "b") as b:
        o = k.mul(b, KO)
        sb = k.mul(b, K)
        c = k.var(I64, k.i64(0))
        with k.loop(0, k_in, "j") as j:
            s = k.ld(a["scores"], k.add(sb, j))
            n = k.ld_i32_as_i64(a["ids"], k.add(sb, j)) if gather else j
            # mask[n] is read only under use_mask (a NULL mask is allowed); LLVM unswitches the
            # loop-invariant test, so the unmasked loop carries no load at all
            masked = k.var(I1, ir.Constant(I1, 0))
            with k.if_(k.icmp("!=", a["use_mask"], k.i64(0))):
                k.set(masked, k.b.fcmp_unordered("==", k.ld(a["mask"], n), k.f32(0.0)))
            with k.if_(k.b.not_(k.get(masked))):
                full = k.icmp(">=", k.get(c), KO)
                last = k.select(full, k.b.sub(KO, k.i64(1)), k.i64(0))
                better = k.fcmp(">", s, k.ld(a["out_scores"], k.add(o, last)))
                with k.if_(k.b.or_(k.b.not_(full), better)):
                    pos = k.var(I64, k.select(full, last, k.get(c)))
                    k.set(c, k.select(full, k.get(c), k.add(k.get(c), k.i64(1))))

                    def cond():
                        p = k.get(pos)
                        prev = k.select(k.icmp(">", p, k.i64(0)), k.b.sub(p, k.i64(1)), k.i64(0))
                        lower = k.fcmp("<", k.ld(a["out_scores"], k.add(o, prev)), s)
                        return k.b.and_(k.icmp(">", p, k.i64(0)), lower)

                    with k.while_(cond, "ins"):
                        p = k.get(pos)
                        q = k.b.sub(p, k.i64(1))
                        k.st(a["out_scores"], k.add(o, p), k.ld(a["out_scores"], k.add(o, q)))
                        k.st(a["out_ids"], k.add(o, p), k.ld(a["out_ids"], k.add(o, q), I32))
                        k.set(pos, q)
                    k.st(a["out_scores"], k.add(o, k.get(pos)), s)
                    k.st(a["out_ids"], k.add(o, k.get(pos)), k.b.trunc(n, I32))
        with k.loop(k.get(c), KO, "pad") as j:
            k.st(a["out_scores"], k.add(o, j), k.f32(float("-inf")))
            k.st(a["out_ids"], k.add(o, j), k.b.trunc(k.i64(-1), I32))
    k.ret()


def insert_pairs(km: KernelModule, name: str) -> None:
    """runtime/lsh/index.py LSHIndex.apply_inserts, exactly: (cell, neuron) pairs sorted by cell, each
    cell's new neurons ranked in order; a neuron with `seen` = counts[cell] + rank offers before it takes
    slot seen while the bucket has room, else slot floor(u[i] * (seen + 1)) (u: the caller's float64
    uniform draws, one per pair) when that is < reservoir; writes in pair order; counts[cell] grows by
    its pairs. Serial: a few hundred thousand pairs, once a step of the frozen epochs."""
    k = km.kernel(name, [("n", "i64"), ("cells", "ptr"), ("ids", "ptr"), ("u", "ptr"), ("reservoir", "i64"),
                         ("tables", "ptr"), ("counts", "ptr")])
    a = k.arg
    R = a["reservoir"]
    F64 = ir.DoubleType()
    prev = k.var(I64, k.i64(-1))
    rank = k.var(I64, k.i64(0))
    with k.loop(0, a["n"], "i") as i:
        cell = k.ld(a["cells"], i, I64)
        same = k.icmp("==", cell, k.get(prev))
        r = k.select(same, k.add(k.get(rank), k.i64(1)), k.i64(0))
        k.set(rank, r)
        k.set(prev, cell)
        seen = k.add(k.ld_i32_as_i64(a["counts"], cell), r)
        drawn = k.b.fptosi(k.b.fmul(k.ld(a["u"], i, F64), k.b.sitofp(k.add(seen, k.i64(1)), F64)), I64)
        slot = k.select(k.icmp("<", seen, R), seen, drawn)
        with k.if_(k.icmp("<", slot, R)):
            k.st(a["tables"], k.add(k.mul(cell, R), slot), k.ld(a["ids"], i, I32))
    # counts after every offer (each pair read its cell's count before this)
    with k.loop(0, a["n"], "c") as i:
        cell = k.ld(a["cells"], i, I64)
        k.st(a["counts"], cell, k.b.trunc(k.add(k.ld_i32_as_i64(a["counts"], cell), k.i64(1)), I32))
    k.ret()


def build_tables(km: KernelModule, name: str, tables: int, range_bits: int, reservoir: int) -> None:
    """Insert neurons n0 + i (i < count) into the tables t in [t0, t1) by reservoir sampling, given their
    buckets (count, tables) int32. Split by tables: a thread owns its tables, so no races, and the
    result does not depend on the thread count. reset != 0 first empties the tables of the range.
    The spec (LSHIndex.build) keeps a uniform random subset of each bucket's neurons; this is the same
    distribution (reservoir sampling), drawn from splitmix64(seed, table, neuron)."""
    nb = 1 << range_bits
    k = km.kernel(name, [("t0", "i64"), ("t1", "i64"), ("buckets", "ptr"), ("n0", "i64"), ("count", "i64"),
                         ("tables", "ptr"), ("counts", "ptr"), ("seed", "i64"), ("reset", "i64")])
    a = k.arg
    R, NB, L = k.i64(reservoir), k.i64(nb), k.i64(tables)
    with k.if_(k.icmp("!=", a["reset"], k.i64(0))):
        with k.loop(k.mul(a["t0"], k.i64(nb * reservoir)), k.mul(a["t1"], k.i64(nb * reservoir)), "z") as i:
            k.st(a["tables"], i, k.b.trunc(k.i64(-1), I32))
        with k.loop(k.mul(a["t0"], NB), k.mul(a["t1"], NB), "zc") as i:
            k.st(a["counts"], i, k.b.trunc(k.i64(0), I32))
    # table by table: one table's buckets and counts (590 KB at 20ng_nextword's 4,096 x 36) stay in L2
    # while every neuron goes in (neuron by neuron, each insertion would miss in another table: that
    # rebuild's refill takes 97-108 ms that way, 49-57 ms this way). A bucket gets its neurons in the
    # same order either way, so the tables are the same.
    with k.loop(a["t0"], a["t1"], "t") as t:
        with k.loop(0, a["count"], "i") as i:
            n = k.add(a["n0"], i)
            cell = k.add(k.mul(t, NB), k.ld_i32_as_i64(a["buckets"], k.add(k.mul(i, L), t)))
            c = k.ld_i32_as_i64(a["counts"], cell)
            k.st(a["counts"], cell, k.b.trunc(k.add(c, k.i64(1)), I32))
            slot = k.var(I64, c)
            with k.if_(k.icmp(">=", c, R)):
                st = k.var(I64, k.b.xor(k.b.mul(a["seed"], k.i64(0x2545F4914F6CDD1D)),
                                        k.b.add(k.b.mul(n, k.i64(0x100000001B3)), t)))
                k.set(slot, k.b.urem(_splitmix(k, st), k.add(c, k.i64(1))))
            with k.if_(k.icmp("<", k.get(slot), R)):
                k.st(a["tables"], k.add(k.mul(cell, R), k.get(slot)), k.b.trunc(n, I32))
    k.ret()
