"""boltc.runtime: what runs a compiled model (executors, LSH, optimizers, data, trainer, sampler)."""
