"""Lowering of `concat(a, b, ...)`: dense values side by side (widths add up).

One copy kernel per part and direction, its widths and offsets baked in as constants: the forward
copies part i (B x w_i) into columns [o_i, o_i + w_i) of the output (B x total); the backward copies
those columns of the output's gradient back out as part i's gradient. Pure data movement, split by
examples; no arithmetic, so both directions equal the spec bit for bit.
"""
from __future__ import annotations

from boltc.lower.builder import KernelModule


def copy_columns(km: KernelModule, name: str, width: int, src_stride: int, src_off: int, dst_stride: int,
                 dst_off: int) -> None:
    """dst[b, dst_off + j] = src[b, src_off + j] for j < width, rows [b0, b1) (row strides given)."""
    k = km.kernel(name, [("b0", "i64"), ("b1", "i64"), ("src", "ptr"), ("dst", "ptr")])
    a = k.arg
    with k.loop(a["b0"], a["b1"], "b") as b:
        s0 = k.add(k.mul(b, k.i64(src_stride)), k.i64(src_off))
        d0 = k.add(k.mul(b, k.i64(dst_stride)), k.i64(dst_off))
        with k.loop(0, width, "j") as j:
            k.st(a["dst"], k.add(d0, j), k.ld(a["src"], k.add(s0, j)))
    k.ret()


def lower_concat(km: KernelModule, layer: dict, ctx: dict) -> dict:
    """Roles part<i> (forward) and grad<i> (backward) for each input i; widths from ctx["in_dims"]."""
    total, off, out = layer["dim"], 0, {}
    for i, w in enumerate(ctx["in_dims"]):
        out[f"part{i}"] = f"{layer['name']}__part{i}"
        copy_columns(km, out[f"part{i}"], w, w, 0, total, off)
        out[f"grad{i}"] = f"{layer['name']}__grad{i}"
        copy_columns(km, out[f"grad{i}"], w, total, off, w, 0)
        off += w
    if off != total:
        raise ValueError(f"concat {layer['name']!r}: parts add up to {off}, not {total}")
    return out
