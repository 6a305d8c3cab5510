"""pigeon's version, in a module of its own at the bottom of the package: anything may import it (checkpoints
record it) without reaching up to the public `pigeon/__init__.py`; pyproject.toml reads it from here too."""

__version__ = "0.1.0"
