"""boltc: a declarative graph compiler for LSH-sparse neural networks on CPUs.

    m = boltc.compile("model.bolt"); m.fit(train, validation=test); m.predict(X, top_k=5)
    m.save("model.boltc"); m = boltc.load("model.boltc")
"""
from boltc.errors import (BoltError, BoltSyntaxError, BoltValidationError, DataError,  # noqa: F401
                          ModelFileError, BackendError, DependencyError)

from boltc.version import __version__  # noqa: F401


def compile(source, **options):  # noqa: A001 - the public name the users know
    """Parse, check and plan a .bolt file (path or text) and return a trainable Model."""
    from boltc.api import compile as _compile
    return _compile(source, **options)


def load(path, **options):
    """Load a saved model (.boltc) for evaluation, prediction or more training."""
    from boltc.api import load as _load
    return _load(path, **options)
