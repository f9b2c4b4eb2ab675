"""Pieces of native runners that several ops share (an op's runner gets the executor `ex`: its thread
pool through `ex.run`, its state, its kernels).

`ADAM_OPS`: an optimizer update, per element, counted as this many multiply-adds when a runner tells
`ex.run` how much work an item is (the pool gives a kernel a second thread only when that pays).
"""
from __future__ import annotations

import numpy as np

from boltc.ops.numeric import ptr

ADAM_OPS = 12


def grad_buffer(ex, key, shape) -> np.ndarray:
    """A float32 (shape) array for a gradient in gradient mode (`step.grads`, data-parallel workers): a
    fresh one, or with `ex.reuse_grad_buffers` a view of a buffer kept per tensor and grown as needed.
    Reuse matters: a fresh 48 MB gradient of the 100k model's output layer costs its page faults on
    every step (measured ~2x the kernel's own time on a 2-core machine); the caller must then be done
    with a step's gradients before the next call."""
    if not ex.reuse_grad_buffers:
        return np.empty(shape, np.float32)
    n = int(np.prod(shape))
    buf = ex.grad_buffers.get(key)
    if buf is None or buf.size < n:
        buf = ex.grad_buffers[key] = np.empty(max(n, 1), np.float32)
    return buf[:n].reshape(shape)


# ---------------------------------------------------------------- sparse inputs (fc and embedding)

def sparse_forward(ex, layer, x, bias) -> np.ndarray:
    out = np.empty((x.shape[0], layer["dim"]), np.float32)
    ex.run(layer["name"], "fwd", x.shape[0], ptr(x.indptr), ptr(x.indices), ptr(x.data),
         ptr(ex.state.params[layer["name"]]["W"]), ptr(bias), ptr(out),
         work=layer["dim"] * (x.nnz / max(1, x.shape[0]) + 1))
    return out


def update_sparse_input(ex, layer, x, dz: np.ndarray, step) -> None:
    """Lazy update of an in-major W (and a dense bias) from dz: split by the batch's unique features.
    The inversion of x's feature ids is made once per step for every layer reading the same input."""
    name, src = layer["name"], layer["inputs"][0]
    p, m, v = ex.param_state(name)
    inv = step.inversions.get(src)
    if inv is None:
        uniq, seg, pos, nu = ex.invert(x.indices, layer["in_dim"], ex.k.fn(name, "invert"))
        prow = np.repeat(np.arange(x.shape[0], dtype=np.int32), np.diff(x.indptr))
        inv = step.inversions[src] = (uniq, seg, pos, nu, prow)
    uniq, seg, pos, nu, prow = inv
    if step.grads is not None:        # gradient mode: the same sums stored, not applied (lower/split.py)
        gW = grad_buffer(ex, (name, "W"), (nu, layer["dim"]))
        ex.run_split(name, "grad", nu, ptr(uniq), ptr(seg), ptr(pos), ptr(prow), ptr(x.data), ptr(dz), ptr(gW),
                     per_thread=ex.scratch_ptrs, work=layer["dim"] * (x.nnz / max(1, nu) + 1))
        step.grads[(name, "W")] = (uniq[:nu].copy(), gW)
        if p.get("b") is not None:
            step.grads[(name, "b")] = (None, np.ascontiguousarray(dz.sum(axis=0, dtype=np.float32)))
        return
    ex.run(name, "upd", nu, ptr(uniq), ptr(seg), ptr(pos), ptr(prow), ptr(x.data), ptr(dz), ptr(p["W"]),
         ptr(m["W"]), ptr(v["W"]), ptr(step.hyper), per_thread=ex.scratch_ptrs,
         work=layer["dim"] * (x.nnz / max(1, nu) + ADAM_OPS))
    if p.get("b") is not None:
        db = np.ascontiguousarray(dz.sum(axis=0, dtype=np.float32))
        ex.run(name, "bias_upd", layer["dim"], ptr(p["b"]), ptr(db), ptr(m["b"]), ptr(v["b"]), ptr(step.hyper),
             work=ADAM_OPS)
