"""Data-parallel training on a Ray cluster (docs/distributed.md): the driver, worker replicas, shards and the gradient exchange."""
