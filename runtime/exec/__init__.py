"""Executing a plan: the NumPy interpreter (the specification), the native executor, model state, optimizers, the thread pool."""
