"""The default recipe (model, epochs, batch) for the device at hand, chosen once per run and said aloud.

A CPU is not one kind of machine: with native bf16 (AVX512-BF16 or AMX) it trains pigeon-n about 3x faster
than in fp32 on AVX2 alone. One fixed recipe is either slow on the plain CPU or leaves accuracy unused on the
fast one, so `model="auto"`, `epochs=None` and `batch=None` are filled from the precision that will run.
The figures behind each choice come from benchmarks/levers.py and benchmarks/speed.py (BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AUTO_MODEL = "auto"
LARGE_DATA = 8192  # training images from which a CPU recipe takes batch 256


@dataclass(frozen=True)
class Recipe:
    kind: str  # "gpu", "cpu-bf16" or "cpu-fp32"
    model: str
    epochs: int
    batch: int
    why: str


def default_recipe(device: torch.device, amp: torch.dtype | None, train_images: int | None = None) -> Recipe:
    """The recipe for `device` running at autocast dtype `amp` (None: fp32) on `train_images` images."""
    if device.type != "cpu":
        return Recipe("gpu", "pigeon-n", 10, 128, f"a {device.type} device")
    # Batch 256 buys CPU throughput on large data; on a small folder it would leave too few steps per epoch.
    batch = 256 if train_images is None or train_images >= LARGE_DATA else 128
    if amp is torch.bfloat16:
        # pigeon-p matches pigeon-n's Fashion-MNIST accuracy in ~25% less time here (92.6% in 140 s against
        # 181 s), and 15 of its epochs cost about what 7 of pigeon-n's do.
        return Recipe("cpu-bf16", "pigeon-p", 15, batch,
                      "this CPU runs bf16 natively, where pigeon-p trains 2.3x the images/s of pigeon-n")
    # In fp32 the narrow network's lead grows to 3.2x: pigeon-n would take about 20 minutes on Fashion-MNIST.
    return Recipe("cpu-fp32", "pigeon-p", 10, batch,
                  "this CPU trains in fp32 (no native bf16), where pigeon-p trains 3.2x the images/s of pigeon-n")


def describe(recipe: Recipe, chosen: dict[str, bool]) -> str:
    """One line for the run's log; `chosen` says which of model/epochs/batch the recipe filled."""
    took = [name for name in ("model", "epochs", "batch") if chosen.get(name)]
    if not took:
        return ""
    values = {"model": recipe.model, "epochs": str(recipe.epochs), "batch": str(recipe.batch)}
    return (f"recipe {recipe.kind}: {', '.join(f'{n} {values[n]}' for n in took)} ({recipe.why}); "
            "set --model/--epochs/--batch to choose yourself")


def recipe_for(device: str = "auto", amp: str = "auto", train_images: int | None = None) -> Recipe:
    """The recipe a run with these --device and --amp options would get (for plans made before a run)."""
    from pigeon.engine.device import amp_dtype, select_device

    selected = select_device(device)
    return default_recipe(selected, amp_dtype(selected, amp), train_images)
