"""pigeon's exceptions. Every error a user can cause is a PigeonError; anything else is a bug.

    PigeonError
     ├── ConfigError       an option, model name or value that is not valid
     ├── DatasetError      data that is missing, empty or inconsistent
     │    └── ImageError   one image (file, bytes or array) that cannot be read as an image
     ├── CheckpointError   a weights file that is missing, corrupt or unsafe
     └── ExportError       an export that cannot be written or does not match
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PigeonError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ConfigError(PigeonError, ValueError):
    pass


class DatasetError(PigeonError):
    pass


class ImageError(DatasetError, ValueError):
    pass


class CheckpointError(PigeonError):
    pass


class ExportError(PigeonError):
    pass


def describe(err: BaseException) -> str:
    """One line for a skipped file or a failed prediction: pigeon's own message, or the type and message."""
    return str(err) if isinstance(err, ImageError) else f"{type(err).__name__}: {err}"


ALIASES = {"learning_rate": "lr", "batch_size": "batch", "bs": "batch", "img_size": "imgsz", "image_size": "imgsz",
           "num_epochs": "epochs"}


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest choice, or '' when none is close."""
    choices = list(choices)
    if ALIASES.get(name) in choices:  # other libraries' names for an option: spelling is no guide to them
        return f" (did you mean {ALIASES[name]!r}?)"
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
