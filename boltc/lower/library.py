"""The kernel-writing library the lowering hands to each op's lowering rule (`LowerContext.lib`):
the IR builder's types and kernel names, the kernel emitters ops share (fc forward, updates, LSH
selection, fused losses) and the moment-storage rule. An op module reads them from its context and so
imports no part of the lowering itself (boltc/ops/base.py says why)."""
from boltc.lower import backward, fc as dense, loss, select  # noqa: F401
from boltc.lower.builder import F32, F64, I1, I32, I64, KernelModule, symbol  # noqa: F401
from boltc.lower.loss import OUTPUT_RULES  # noqa: F401
from boltc.plan.moments import moment_dtypes, moment_kind  # noqa: F401
