"""The ops of the language, one module each (boltc/ops/base.py: what a module declares).

`OPS` maps an op's name to its declaration; every layer builds its tables from it (the front end's
arguments, the shape rules, parameter shapes, plan entries, interpreter rules, lowering rules and
native runners). Adding an op is adding one module here that sets `OP = Op(...)`: it is found by
scanning this package, so no list elsewhere names it.
"""
from __future__ import annotations

import importlib
import pkgutil

from boltc.ops.base import Op

OPS: dict[str, Op] = {}
for _info in pkgutil.iter_modules(__path__):
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    _op = getattr(_module, "OP", None)
    if isinstance(_op, Op):
        OPS[_op.name] = _op
OPS = dict(sorted(OPS.items(), key=lambda kv: (kv[1].order, kv[0])))
LAYER_OPS: tuple[str, ...] = tuple(OPS)
