"""Row prefetch in the training kernels and 64-byte aligned W, m, v: training steps of the 670k chain
(SYNTHETIC: 135,909 sparse features -> 256 relu -> 670,091 softmax, batch 256, BOLT's sparsity 0.005)
with the kernels built without and with the prefetch hints of boltc/lower/backward.py, on the output
layer's W, m, v placed as numpy places them (16 bytes past a 64-byte line) or aligned, in alternating
turns in one process.

  python benchmarks/train_step_ab.py [--rounds 8 --steps 2 --threads 2]

Variants (kernels x placement of the output layer's W, m, v):
  before           no hints in fwd_by_neuron / rows_update_out_major, arrays 16 bytes past a line
  fwd              the neuron-order forward prefetches W rows, unaligned
  fwd+upd W        ... and the fused update prefetches W rows, unaligned
  fwd+upd Wmv      ... and the fused update prefetches W, m and v rows, unaligned
  all              ... and the first layer's update prefetches its W, m and v rows (the shipped build)
  <kernels>, aligned   the same kernels on W, m, v on a 64-byte boundary
Each placement is its own copy of W, m, v (the same numbers at the start); the variants train them in
turns (a speed measurement: the trajectory does not matter), each turn `--steps` steps on the next
batches, the order rotating and reversing each round; the machine is shared and noisy, so the table
gives each variant's median and best turn and their ratio to the first variant. Every other kernel
is the same code in every variant. Before timing, each build takes one step from the same state on
the same batch, on both placements, and must give the same bits.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import batches, build_tables, fresh_state, synth_data, table, write_json, xc_plan  # noqa: E402

from boltc.lower import backward as bw  # noqa: E402
from boltc.runtime.exec.native import NativeExecutor  # noqa: E402
from boltc.lower.kernels import compile_plan  # noqa: E402

WMV = ("W", "m", "v")
KERNELS = {       # name: (forward prefetches W, rows the output's update prefetches, the first layer's)
    "before": (False, (), ()),
    "fwd": (True, (), ()),
    "fwd+upd W": (True, ("W",), ()),
    "fwd+upd Wmv": (True, WMV, ()),
    "all": (True, WMV, WMV),
}


@contextlib.contextmanager
def lowering(fwd_prefetch: bool, out_prefetch: tuple, in_prefetch: tuple):
    """rules.py lowers through the `bw` module's functions: build with other prefetch choices."""
    saved = bw.fwd_by_neuron, bw.rows_update_out_major, bw.rows_update_in_major, bw.rows_update_blocked
    bw.fwd_by_neuron = functools.partial(saved[0], prefetch=fwd_prefetch)
    bw.rows_update_out_major = functools.partial(saved[1], prefetch=out_prefetch)
    bw.rows_update_in_major = functools.partial(saved[2], prefetch=in_prefetch)
    bw.rows_update_blocked = functools.partial(saved[3], prefetch=out_prefetch)
    try:
        yield
    finally:
        bw.fwd_by_neuron, bw.rows_update_out_major, bw.rows_update_in_major, bw.rows_update_blocked = saved


def placed(a: np.ndarray, offset: int) -> np.ndarray:
    """A copy of `a` starting `offset` bytes past a 64-byte boundary."""
    buf = np.zeros(a.nbytes + 64 + offset, np.uint8)
    start = -buf.ctypes.data % 64 + offset
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="before,fwd,fwd+upd W,fwd+upd Wmv,all,all aligned,before aligned",
                    help="comma-separated kernel names (see KERNELS), each optionally followed by ' aligned'")
    ap.add_argument("--moments", choices=["f32", "bf16"], default="f32",
                    help="storage of Adam's moments (bf16: what adam(moments=auto) picks for amazon670k.bolt)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--kernel-reps", type=int, default=10,
                    help="then time the output layer's two big kernels alone, this many alternating turns (0: skip)")
    args = ap.parse_args()
    F, L, B = 135909, 670091, 256
    plan = xc_plan(F, L, batch=B, lr=1e-4)
    plan["train"]["moments"] = args.moments
    variants = [v.strip() for v in args.variants.split(",")]
    X, Y = synth_data((args.steps * args.rounds * len(variants) + 4) * B, F, L, seed=1)
    bs = list(batches(X, Y, B))
    state = fresh_state(plan)
    out = plan["output"]
    # the output layer's W, m, v as numpy places big arrays (16 bytes past a line) and aligned
    arrays = {}
    for where, offset in (("unaligned", 16), ("aligned", 0)):
        arrays[where] = {g: placed(grp[out]["W"], offset) for g, grp in
                         (("params", state.params), ("m", state.m), ("v", state.v))}
    kernels = {}
    for v in variants:
        name = v.removesuffix(" aligned")
        if name not in kernels:
            with lowering(*KERNELS[name]):
                kernels[name] = compile_plan(plan)
    execs = {name: NativeExecutor(plan, state, threads=args.threads, kernels=k) for name, k in kernels.items()}
    assert all(e.native for e in execs.values())
    build_tables(plan, state)
    lr = plan["train"]["lr"]

    def use(where):
        for g, grp in (("params", state.params), ("m", state.m), ("v", state.v)):
            grp[out]["W"] = arrays[where][g]

    def live_arrays():
        """Every array a step writes (in place), the current placement's output W, m, v included."""
        yield from (a for grp in (state.params, state.m, state.v) for p in grp.values() for a in p.values())
        yield from (a for idx in state.lsh.values() for a in idx.arrays().values())

    # same bits: every kernel build takes one step from the same state on the same batch
    ref = None
    for name, ex in execs.items():
        for where in ("unaligned", "aligned"):
            use(where)
            snap = [(a, a.copy()) for a in live_arrays()]
            step0 = state.step
            loss = ex.train_step(bs[0], lr)
            got = (loss.copy(), state.params[out]["W"].copy(), state.m[out]["W"].copy(),
                   state.params["hidden"]["W"].copy())
            state.step = step0
            for a, copy in snap:
                a[...] = copy
            del snap
            if ref is None:
                ref = got
            assert all(np.array_equal(a.view(np.uint8), b.view(np.uint8)) for a, b in zip(got, ref)), \
                f"{name} on {where} W, m, v: not the same bits as before"
    print("same bits: every kernel build, aligned or not, gave the same loss and the same W, m (output) and "
          "W (hidden) after one step")

    eps = {v: [] for v in variants}
    i = 1
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in (order if r % 2 == 0 else order[::-1]):
            name = v.removesuffix(" aligned")
            use("aligned" if v.endswith(" aligned") else "unaligned")
            ex = execs[name]
            t = time.perf_counter()
            for _ in range(args.steps):
                ex.train_step(bs[i % len(bs)], lr)
                i += 1
            eps[v].append(args.steps * B / (time.perf_counter() - t))
    # paired: each turn against the first variant's turn of the same round (load drifts between rounds)
    paired = {v: [a / b for a, b in zip(t, eps[variants[0]])] for v, t in eps.items()}
    base = statistics.median(eps[variants[0]])
    base_best = max(eps[variants[0]])
    rows = [{"variant": v, "median ex/s": round(statistics.median(t), 1), "best ex/s": round(max(t), 1),
             "median ms/step": round(B / statistics.median(t) * 1e3, 1),
             f"median / {variants[0]}": f"{statistics.median(t) / base:.3f}",
             f"best / {variants[0]}": f"{max(t) / base_best:.3f}",
             "median of paired ratios": f"{statistics.median(paired[v]):.3f}"} for v, t in eps.items()]
    print(f"670k chain (synthetic), {args.moments} moments, batch {B}, {args.threads} threads, {args.rounds} rounds of "
          f"{len(variants)} turns of {args.steps} steps")
    print(table(rows, list(rows[0])))
    krows = kernel_turns(args, plan, state, execs, use, variants, bs) if args.kernel_reps else []
    path = write_json("train_step_ab" + (f"_{args.tag}" if args.tag else ""),
                      {"moments": args.moments, "rounds": args.rounds, "steps": args.steps, "threads": args.threads,
                       "turns_eps": eps,
                       "paired_ratios": paired, "rows": rows, "kernel_rows": krows})
    print(f"wrote {path}")


def kernel_turns(args, plan, state, execs, use, variants, bs) -> list[dict]:
    """The output layer's neuron-order forward and fused update + input gradient alone, each build on
    each placement, on the last step's inversion (~479k unique rows: W, m, v far beyond the caches),
    and the first layer's update on the features of a new batch each call (its W, m, v always
    aligned: the placement is the output's), in alternating turns; median ms per call."""
    from boltc.lower.kernels import ptr
    from boltc.ops.fc import BLOCKED_MIN_CAP, _blocked_scratch
    from boltc.runtime.exec.native_ops import N_CHUNKS
    out = plan["output"]
    ex0 = execs[variants[0].removesuffix(" aligned")]
    uniq, seg, pos, nu = ex0._inv
    B, K, IN = 256, plan["layers"][-1]["active"], plan["layers"][-1]["in_dim"]
    rng = np.random.default_rng(0)
    x = rng.random((B, IN), dtype=np.float32)
    g = (rng.standard_normal((B, K), dtype=np.float32) * 1e-4)
    z = np.empty((B, K), np.float32)
    hyper = ex0._hyper(1e-4)
    bounds = [(c * nu // N_CHUNKS, (c + 1) * nu // N_CHUNKS) for c in range(N_CHUNKS)]
    scratch = [np.empty(IN, np.float32) for _ in range(N_CHUNKS)]
    dxbufs = np.zeros((N_CHUNKS, B, IN), np.float32)
    hid = plan["layers"][0]
    first = []
    for batch in bs[:8]:
        xb = batch.inputs["features"]
        u1, s1, p1, n1 = ex0.invert(xb.indices, hid["in_dim"], ex0.k.fn(hid["name"], "invert"))
        first.append((u1, s1, p1, n1, np.repeat(np.arange(B, dtype=np.int32), np.diff(xb.indptr)), xb.data))
    dz = rng.standard_normal((B, hid["dim"]), dtype=np.float32) * 1e-4
    kinds = ("forward", "update", "first")
    times = {(v, kern): [] for v in variants for kern in kinds}
    for r in range(args.kernel_reps):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            ex = execs[v.removesuffix(" aligned")]
            use("aligned" if v.endswith(" aligned") else "unaligned")
            p, m, vv = state.params[out], state.m[out], state.v[out]
            t = time.perf_counter()
            ex.pool.run(ex.k.fn(out, "fwd_neuron"), nu, ptr(uniq), ptr(seg), ptr(pos), ptr(x), ptr(p["W"]),
                        ptr(p["b"]), ptr(z))
            times[(v, "forward")].append(time.perf_counter() - t)
            t = time.perf_counter()
            cap = max(BLOCKED_MIN_CAP, int(np.diff(seg[:nu + 1]).max()))
            blk = _blocked_scratch(ex, out, B, cap, IN)
            ex.pool.run_chunks(ex.k.fn(out, "upd_active_dx"), bounds, ptr(uniq), ptr(seg), ptr(pos), B, ptr(g),
                               ptr(x), ptr(p["W"]), ptr(p["b"]), ptr(m["W"]), ptr(vv["W"]), ptr(m["b"]),
                               ptr(vv["b"]), ptr(hyper), cap,
                               per_chunk=[(ptr(scratch[c]), ptr(dxbufs[c]), ptr(blk[c]["cnt"]), ptr(blk[c]["lb"]),
                                           ptr(blk[c]["lg"]), ptr(blk[c]["bn"]), ptr(blk[c]["bg"]))
                                          for c in range(N_CHUNKS)])
            times[(v, "update")].append(time.perf_counter() - t)
            u1, s1, p1, n1, prow, vals = first[(r * len(variants) + variants.index(v)) % len(first)]
            ph, mh, vh = state.params[hid["name"]], state.m[hid["name"]], state.v[hid["name"]]
            t = time.perf_counter()
            ex.pool.run(ex.k.fn(hid["name"], "upd"), n1, ptr(u1), ptr(s1), ptr(p1), ptr(prow), ptr(vals), ptr(dz),
                        ptr(ph["W"]), ptr(mh["W"]), ptr(vh["W"]), ptr(hyper), per_thread=ex.scratch_ptrs)
            times[(v, "first")].append(time.perf_counter() - t)
    rows = []
    for v in variants:
        f, u, fl = (statistics.median(times[(v, kk)]) * 1e3 for kk in kinds)
        f0, u0, fl0 = (statistics.median(times[(variants[0], kk)]) * 1e3 for kk in kinds)
        rows.append({"variant": v, "forward ms": round(f, 1), "forward speed-up": f"{f0 / f:.2f}",
                     "fused update ms": round(u, 1), "update speed-up": f"{u0 / u:.2f}",
                     "first-layer update ms": round(fl, 2), "first-layer speed-up": f"{fl0 / fl:.2f}"})
    print(f"output layer kernels alone ({nu:,} unique rows, {args.kernel_reps} alternating turns, median):")
    print(table(rows, list(rows[0])))
    return rows


if __name__ == "__main__":
    main()
