"""The default recipe: chosen from the precision the CPU will run, said in the run's log, and never over what
the user set. CPUs this machine is not are faked through the probe, as in test_device.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pigeon
from pigeon.engine import checkpoint
from pigeon.engine import device as dev
from pigeon.engine.device import CpuFeatures
from pigeon.engine.recipe import LARGE_DATA, default_recipe, recipe_for
from pigeon.errors import ConfigError

AVX2 = CpuFeatures(name="AMD EPYC 7B12", avx2=True, onednn_bf16=False)
AMX = CpuFeatures(name="Xeon 8480", avx2=True, avx512=True, avx512_bf16=True, amx_bf16=True, vnni=True)


def test_each_device_kind_has_its_recipe() -> None:
    fp32 = default_recipe(torch.device("cpu"), None, LARGE_DATA)
    bf16 = default_recipe(torch.device("cpu"), torch.bfloat16, LARGE_DATA)
    gpu = default_recipe(torch.device("cuda"), torch.bfloat16, LARGE_DATA)
    assert (fp32.kind, fp32.model, fp32.epochs, fp32.batch) == ("cpu-fp32", "pigeon-p", 10, 256)
    assert (bf16.kind, bf16.model, bf16.epochs, bf16.batch) == ("cpu-bf16", "pigeon-p", 15, 256)
    assert (gpu.kind, gpu.model) == ("gpu", "pigeon-n")
    # a small folder keeps enough steps per epoch
    assert default_recipe(torch.device("cpu"), None, 1000).batch == 128


@pytest.mark.parametrize(("cpu", "amp", "kind"), [(AVX2, "auto", "cpu-fp32"), (AMX, "auto", "cpu-bf16"),
                                                  (AMX, "off", "cpu-fp32")])
def test_the_recipe_follows_the_precision_that_will_run(monkeypatch: pytest.MonkeyPatch, cpu: CpuFeatures,
                                                        amp: str, kind: str) -> None:
    monkeypatch.setattr(dev, "probe_cpu", lambda: cpu)
    assert recipe_for("cpu", amp).kind == kind


def test_a_default_run_says_its_recipe_and_records_it(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setattr(dev, "probe_cpu", lambda: AVX2)
    run = pigeon.train("digits", epochs=1, device="cpu", plots=False, project=str(tmp_path))
    out = capsys.readouterr().out
    assert "recipe cpu-fp32: model pigeon-p, batch 128 (this CPU trains in fp32" in out
    saved = json.loads((run.run_dir / "config.json").read_text())
    assert (saved["model"], saved["epochs"], saved["batch"]) == ("pigeon-p", 1, 128)
    assert checkpoint.read(run.best)[1]["model"] == "pigeon-p"


def test_what_the_user_sets_wins(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = pigeon.train("digits", model="pigeon-n", epochs=1, batch=64, device="cpu", plots=False,
                       project=str(tmp_path))
    assert "recipe" not in capsys.readouterr().out
    assert (run.config.model, run.config.epochs, run.config.batch) == ("pigeon-n", 1, 64)


def test_auto_fine_tunes_a_checkpoint_as_its_own_model(digits_run: Path, tmp_path: Path) -> None:
    source = json.loads((digits_run / "config.json").read_text())["model"]
    run = pigeon.train("digits", weights=str(digits_run / "weights" / "best.safetensors"), epochs=1, device="cpu",
                       plots=False, project=str(tmp_path), verbose=False)
    assert run.config.model == source


def test_auto_with_weights_that_name_no_model_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"fc.weight": torch.zeros(10, 64)}, str(path))
    with pytest.raises(ConfigError, match="name it with --model"):
        pigeon.train("digits", weights=str(path), epochs=1, device="cpu", project=str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()  # refused before any run folder
