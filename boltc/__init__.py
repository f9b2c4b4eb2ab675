"""boltc: a declarative graph compiler for LSH-sparse neural networks on CPUs.

    m = boltc.compile("model.bolt"); m.fit(train, validation=test); m.predict(X, top_k=5)
    m.save("model.boltc"); m = boltc.load("model.boltc")
"""
from boltc.errors import (BackendError, BoltError, BoltSyntaxError, BoltValidationError, DataError,  # noqa: F401
                          DependencyError, ModelFileError)
from boltc.version import __version__  # noqa: F401


# Decision: the package root imports the compiler (boltc.api) only when compile/load is called, so a
# runtime-only program (`from boltc.runtime import savefile`) never loads the front end, the passes
# or the CLI (tests/test_layers.py checks it). The one import inside a function that is not an
# optional dependency; the layer test allows exactly these two.
def compile(source, **options):  # noqa: A001 - the public name the users know
    """Parse, check and plan a .bolt file (path or text) and return a trainable Model."""
    from boltc.api import compile as _compile  # lazy: keeps the runtime free of the compiler (see above)
    return _compile(source, **options)


def load(path, **options):
    """Load a saved model (.boltc) for evaluation, prediction or more training."""
    from boltc.api import load as _load  # lazy: keeps the runtime free of the compiler (see above)
    return _load(path, **options)
