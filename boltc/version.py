"""The package version (also in pyproject.toml), importable by every layer."""
__version__ = "0.1.0"
