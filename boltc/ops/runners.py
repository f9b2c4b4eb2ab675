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
    if step.factors is not None:      # factor mode: the batch's rows and dz (apply_sparse_input)
        step.factors[name] = {"kind": "sparse_input", "indptr": x.indptr, "indices": x.indices, "data": x.data,
                              "dz": np.ascontiguousarray(dz, dtype=np.float32)}
        return
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


# ---------------------------------------------------------------- factors (data-parallel workers)
# A worker in factor mode hands out, instead of a layer's weight gradient, what the fused update kernel
# makes it from (the batch's inputs and the gradient of the layer's pre-activations); the owner of a row
# range concatenates every worker's factors in worker order and runs the fused update kernel on them,
# restricted to its rows. Per kind: merge(list of factor dicts) -> one, apply(ex, layer, f, owned,
# moments, hyper, copy_out) -> {tensor: (rows or None, new values or None)}.


def shifted(a, lo: int):
    """The address of moment shard `a` (rows [lo, hi) of a tensor) as if it held the whole tensor: the
    kernels index moments by the tensor's row ids, and touch only the owner's rows."""
    if a is None:
        return None
    if a.ndim == 0 or a.shape[0] == 0:
        return ptr(a)
    assert a.flags.c_contiguous, "kernels read C-contiguous buffers"
    return a.ctypes.data - lo * a.strides[0]


def owned_inversion(ex, name: str, ids, lo: int, hi: int):
    """(uniq, seg, pos, n) of the ids in [lo, hi) of a whole batch's ids (a row owner's rows), by the
    split kernel `invert_range`: one pass over the ids and a scan of the owned range only, no branch
    per id (a full `invert` sorted every id and scanned every row: 2.5 ms an update on synth100k)."""
    return ex.invert_owned(ids, lo, hi, ex.split_kernels.fn(name, "invert_range"))


def merge_sparse_input(fs: list) -> dict:
    """Workers' sparse-input factors stacked in order: one CSR batch and its dz rows."""
    if len(fs) == 1:
        return fs[0]
    indptr = [np.asarray(fs[0]["indptr"], np.int64)]
    for f in fs[1:]:
        indptr.append(np.asarray(f["indptr"][1:], np.int64) + indptr[-1][-1])
    return {"kind": "sparse_input", "indptr": np.concatenate(indptr),
            "indices": np.concatenate([f["indices"] for f in fs]).astype(np.int32, copy=False),
            "data": np.concatenate([f["data"] for f in fs]).astype(np.float32, copy=False),
            "dz": None if any(f["dz"] is None for f in fs) else np.concatenate([f["dz"] for f in fs])}


def apply_sparse_input(ex, layer, f: dict, owned: dict, moments: dict, hyper, copy_out: bool) -> dict:
    """The fused lazy update of an in-major W (and its dense bias) on the owned rows, from the whole
    batch's factors: the single-process `update_sparse_input` arithmetic on the same rows."""
    name = layer["name"]
    p = ex.state.params[name]
    W, b = p["W"], p.get("b")
    indptr, indices, data = f["indptr"], np.ascontiguousarray(f["indices"], np.int32), f["data"]
    dz = np.ascontiguousarray(f["dz"], dtype=np.float32)
    prow = np.repeat(np.arange(indptr.size - 1, dtype=np.int32), np.diff(indptr))
    lo, hi = owned["W"]
    uniq, seg, pos, nu = owned_inversion(ex, name, indices, lo, hi)
    mW, vW = moments["W"]
    ex.run(name, "upd", nu, ptr(uniq), ptr(seg), ptr(pos), ptr(prow),
           ptr(data), ptr(dz), ptr(W), shifted(mW, lo), shifted(vW, lo), ptr(hyper), per_thread=ex.scratch_ptrs,
           work=layer["dim"] * (indices.size / max(1, nu) + ADAM_OPS))
    rows = np.array(uniq[:nu])
    out = {"W": (rows, W[rows] if copy_out else None)}
    if b is not None:
        db = np.ascontiguousarray(dz.sum(axis=0, dtype=np.float32))
        blo, bhi = owned["b"]
        mb, vb = moments["b"]
        ex.run(name, "bias_upd", bhi - blo, ptr(b) + 4 * blo, ptr(db) + 4 * blo, ptr(mb), ptr(vb), ptr(hyper),
               work=ADAM_OPS)
        out["b"] = (None, b[blo:bhi].copy() if copy_out else None)
    return out
