"""Numeric helpers the ops' interpreter rules and native runners share (NumPy only).

The interpreter's conventions (docs/CONTRACTS.md section 6): a parameter gradient is a `ParamGrad`
block of the rows and columns a batch touched (lazy Adam updates only those); activations are taken
over the positions given (an active set, or every neuron).
"""
from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class ParamGrad:
    rows: np.ndarray | None      # touched row ids (sorted, unique) or None = every row
    cols: np.ndarray | None      # touched column ids (sorted, unique) or None = every column
    value: np.ndarray            # the dense block W[rows][:, cols]'s gradient

    def dense(self, shape) -> np.ndarray:
        """The full-size gradient (zeros outside the block); for tests and references."""
        out = np.zeros(shape, dtype=self.value.dtype)
        if out.ndim == 1:
            out[slice(None) if self.rows is None else self.rows] += self.value
        else:
            r = slice(None) if self.rows is None else self.rows
            c = slice(None) if self.cols is None else self.cols
            if self.rows is not None and self.cols is not None:
                out[np.ix_(self.rows, self.cols)] += self.value
            else:
                out[r, c] += self.value
        return out


# ---------------------------------------------------------------- activations (on the active positions)

def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    # split by sign so exp never overflows
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def activate(kind: str, z: np.ndarray) -> np.ndarray:
    """Softmax is taken row-wise over the columns given (the active set, or all neurons)."""
    if kind == "relu":
        return np.maximum(z, 0)
    if kind == "tanh":
        return np.tanh(z)
    if kind == "sigmoid":
        return sigmoid(z)
    if kind == "softmax":
        return softmax(z)
    if kind == "linear":
        return z
    raise ValueError(f"unknown activation {kind!r}")


def activation_backward(kind: str, z: np.ndarray, act: np.ndarray, dact: np.ndarray) -> np.ndarray:
    if kind == "relu":
        return dact * (z > 0)
    if kind == "tanh":
        return dact * (1 - act * act)
    if kind == "sigmoid":
        return dact * act * (1 - act)
    if kind == "softmax":
        return act * (dact - (dact * act).sum(axis=1, keepdims=True))
    if kind == "linear":
        return dact
    raise ValueError(f"unknown activation {kind!r}")


# ---------------------------------------------------------------- helpers

def compress_columns(x: sp.csr_matrix):
    """(F, Xc): the sorted unique feature ids of a CSR batch and the batch re-indexed onto them, so
    gradient blocks have |F| rows instead of in_dim (lazy updates touch only F)."""
    feats, inv = np.unique(x.indices, return_inverse=True)
    xc = sp.csr_matrix((x.data, inv.astype(np.int32), x.indptr), shape=(x.shape[0], len(feats)))
    return feats, xc


def matmul(x, w: np.ndarray) -> np.ndarray:
    """x (CSR or dense) @ w, always a dense ndarray."""
    out = x @ w
    return np.asarray(out)


def scatter_dense(active: np.ndarray, vals: np.ndarray, dim: int) -> np.ndarray:
    out = np.zeros((active.shape[0], dim), dtype=vals.dtype)
    np.put_along_axis(out, active.astype(np.int64), vals, axis=1)
    return out


# ---------------------------------------------------------------- fc


# Addresses of arrays seen by `ptr`, by id: (weak reference, address). `a.ctypes.data` costs about
# 1.7 us (it builds a ctypes helper object), and a batch-64 training step passes about 80 buffers, most
# of them the same parameters, moments and scratch every step: a lookup here costs about a tenth. A
# dead array's id can be reused by a new one; its weak reference then no longer returns the array, so
# the entry is replaced. An array's address cannot change while it lives (nothing resizes in place).
_ADDRESSES: dict = {}
_MAX_ADDRESSES = 4096
_c_char, _addressof = ctypes.c_char, ctypes.addressof


def ptr(a: np.ndarray | None):
    """Raw address of a C-contiguous array (None -> NULL). The caller keeps `a` alive across the call."""
    if a is None:
        return None
    hit = _ADDRESSES.get(id(a))
    if hit is not None and hit[0]() is a:
        return hit[1]
    assert a.flags.c_contiguous, "kernels read C-contiguous buffers"
    try:
        # the buffer protocol: 0.4 us, where a.ctypes.data builds a helper object (1.7 us); a step's
        # fresh temporaries (about 30 a batch-64 step) all come through here
        address = _addressof(_c_char.from_buffer(a))
    except (TypeError, ValueError):            # read-only or empty: the general way
        address = a.ctypes.data
    try:
        ref = weakref.ref(a)
    except TypeError:               # not weak-referenceable (not an ndarray): uncached
        return address
    if len(_ADDRESSES) >= _MAX_ADDRESSES:
        _ADDRESSES.clear()          # per-step temporaries: bounded, the steady-state buffers come back
    _ADDRESSES[id(a)] = (ref, address)
    return address


def act_grad(activation: str, act: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Same formulas as boltc/lower/backward.py act_grad (and the spec's activation_backward)."""
    if activation == "relu":
        d = d * (act > 0)
    elif activation == "sigmoid":
        d = d * (act * (1 - act))
    elif activation == "tanh":
        d = d * (1 - act * act)
    return np.ascontiguousarray(d, dtype=np.float32)


def smoothing_constants(smoothing: float, columns: int) -> tuple[np.float32, np.float32]:
    """(1 - e, e / K) rounded to float32 once: the two constants both backends use."""
    return np.float32(1.0 - smoothing), np.float32(smoothing / columns)


def loss_options(plan: dict) -> dict:
    """The loss rule's keyword arguments from the plan (label smoothing, cross entropy only)."""
    e = float((plan.get("train") or {}).get("label_smoothing", 0.0) or 0.0)
    return {"smoothing": e} if e and plan.get("loss", "cross_entropy") == "cross_entropy" else {}
