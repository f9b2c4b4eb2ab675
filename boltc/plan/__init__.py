"""The plan: the contract between the compiler and the runtime (contract.py) and the moment-storage
rule both sides apply to it (moments.py). A leaf package: it imports nothing else of boltc."""
from boltc.plan.contract import (CATEGORICAL_KEYS, DEFAULT_NEGATIVES, DEFAULT_RANDOM_SHARE, MEMORY_KEYS,  # noqa: F401
                                 PLAN_FORMAT, SPARSE_KINDS, TEXT_KEYS, TRAIN_DEFAULTS, InputEntry, LayerEntry, Plan,
                                 TargetEntry)
