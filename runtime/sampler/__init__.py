"""The adaptive data sampler (docs/sampler.md): the Nadaraya-Watson loss sketch and its native kernels."""
