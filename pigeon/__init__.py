"""pigeon: image classification in one command.

    import pigeon
    run = pigeon.train(data="fashion-mnist", model="pigeon-n", epochs=10)
    clf = pigeon.load(run.best)
    clf.predict("shoe.png").label
"""

__version__ = "0.1.0"

from pigeon.api import audit, bench, compare, explain, export, load, predict, runs, train, tune, val  # noqa: E402
from pigeon.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DatasetError,
    ExportError,
    ImageError,
    PigeonError,
)
from pigeon.models import list_models  # noqa: E402

__all__ = ["CheckpointError", "ConfigError", "DatasetError", "ExportError", "ImageError", "PigeonError", "__version__",
           "audit", "bench", "compare", "explain", "export", "list_models", "load", "predict", "runs", "train", "tune",
           "val"]
