"""Models: a registry of builders; every model honours forward_features / forward_head / reset_classifier."""

from pigeon.models import pigeonnet  # noqa: F401  (registers pigeon-n/s/m)
from pigeon.models.registry import MODELS, create_model, list_models, register

__all__ = ["MODELS", "create_model", "list_models", "register"]
