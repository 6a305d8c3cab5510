"""PIGEON_OFFLINE=1: pigeon touches the network only when asked to (a missing built-in dataset, hub weights);
with this set it refuses those too, naming the option that asked and how to provide the files instead."""

from __future__ import annotations

import os

VARIABLE = "PIGEON_OFFLINE"


def offline() -> bool:
    return os.environ.get(VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")
