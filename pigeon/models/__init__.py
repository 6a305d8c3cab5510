"""Models: pigeon's own family, timm:<name> and tv:<name>; any model maps images to logits through a linear head."""

from pigeon.models import pigeonnet  # noqa: F401  (registers pigeon-n/s/m)
from pigeon.models.registry import MODELS, check_model_name, create_model, list_models, register

__all__ = ["MODELS", "check_model_name", "create_model", "list_models", "register"]
