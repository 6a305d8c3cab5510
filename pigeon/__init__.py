"""pigeon: image classification in one command.

    import pigeon
    run = pigeon.train(data="fashion-mnist", model="pigeon-n", epochs=10)
    clf = pigeon.load(run.best)
    clf.predict("shoe.png").label
"""

from pigeon._version import __version__
from pigeon.api import audit, bench, compare, datasets, explain, export, load, predict, runs, train, tune, val
from pigeon.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    ExportError,
    ImageError,
    PigeonError,
)
from pigeon.models import list_models
from pigeon.serve import serve  # the app and REST API; FastAPI loads only when a server starts

__all__ = ["CheckpointError", "ConfigError", "DatasetError", "ExportError", "ImageError", "PigeonError", "__version__",
           "audit", "bench", "compare", "datasets", "explain", "export", "list_models", "load", "predict", "runs",
           "serve", "train", "tune", "val"]
