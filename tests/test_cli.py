"""The CLI in-process: `pigeon.cli.main(argv) -> int`, with its printed output and written files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pigeon
from pigeon.cli import main


@pytest.fixture
def best(digits_run: Path) -> str:
    return str(digits_run / "weights" / "best.safetensors")


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """Four real digits (0, 1, 2, 3) as 8x8 PNGs, in sorted path order."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    paths = []
    for digit in range(4):
        index = int(np.flatnonzero(bunch.target == digit)[-1])
        path = tmp_path / "imgs" / f"{digit}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.round(bunch.images[index] * (255 / 16)).astype(np.uint8), "L").save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize(("verb", "options"), [
    ("train", ["--data", "--epochs", "--lr", "--val-fraction", "--no-ema", "--cache-dir", "--project"]),
    ("val", ["--model", "--data", "--split", "--project", "--no-plots"]),
    ("predict", ["--model", "--source", "--top-k", "--save-json", "--save-csv"]),
    ("export", ["--model", "--format", "--out", "--imgsz", "--dynamic-batch", "--int8", "--calib-data", "--data",
                "--no-check", "--min-agreement", "--int8-max-drop"]),
    ("bench", ["--model", "--formats", "--imgsz", "--runs", "--warmup", "--throughput-seconds", "--project"]),
    ("models", ["--help"]),
    ("train", ["--config", "--tensorboard", "--mlflow"]),
    ("explain", ["--model", "--source", "--method", "--class", "--layer", "--out"]),
    ("runs", ["--project", "--sort", "--json"]),
    ("compare", ["RUN", "--out"]),
    ("tune", ["--data", "--time", "--trials", "--space", "--pruner", "--no-final", "--name", "--epochs", "--lr"]),
    ("serve", ["--home", "--model", "--host", "--port", "--token", "--allow-host", "--max-batch", "--max-wait-ms",
               "--max-upload-mb", "--max-pixels", "--jobs"]),
])
def test_help_for_each_verb(verb: str, options: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([verb, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: pigeon {verb}")
    for option in options:
        assert option in out, option


def test_top_level_help_lists_the_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(verb in out for verb in ("train", "val", "predict", "models", "serve"))
    assert main([]) == 2  # no verb: the help, and a failure code
    assert "usage: pigeon" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"pigeon {pigeon.__version__}\n"


def test_models_lists_the_family(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in pigeon.list_models():
        assert sum(line.split()[0] == name for line in lines if line.strip()) == 1, name


def test_unknown_option_suggests_the_close_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", "digits", "--epoch", "1", "--project", str(tmp_path / "runs")])
    assert code == 2
    err = capsys.readouterr().err
    assert err == "ConfigError: unknown option --epoch (did you mean '--epochs'?); see `pigeon train --help`\n"
    assert not (tmp_path / "runs").exists()
    assert main(["predict", "--model", "m.safetensors", "--source", "x.png", "--topk=3"]) == 2
    assert "unknown option --topk (did you mean '--top-k'?)" in capsys.readouterr().err


def test_unknown_model_suggests_the_close_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", "digits", "--model", "pigeon-x", "--project", str(tmp_path / "runs")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("ConfigError: unknown model 'pigeon-x' (did you mean 'pigeon-")
    assert err.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "runs").exists()


def test_invalid_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", "digits", "--epochs", "0", "--project", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "ConfigError: epochs=0 is out of range; it must be >= 1\n"
    with pytest.raises(SystemExit) as info:  # argparse checks choices and types itself
        main(["train", "--data", "digits", "--optimizer", "adam"])
    assert info.value.code == 2
    assert "invalid choice: 'adam'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", "digits", "--lr", "fast"])
    assert info.value.code == 2
    assert "invalid float value: 'fast'" in capsys.readouterr().err


def test_train_a_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", "digits", "--epochs", "1", "--batch", "256", "--val-fraction", "0",
                 "--amp", "off", "--device", "cpu", "--no-ema", "--no-plots", "--no-verbose",
                 "--cache-dir", str(tmp_path / "cache"), "--project", str(tmp_path / "runs"), "--name", "cli"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["run_dir"] == str(tmp_path / "runs" / "cli")
    assert result["best"] == str(tmp_path / "runs" / "cli" / "weights" / "best.safetensors")
    assert result["val_top1"] is None and 0.0 <= result["test_top1"] <= 1.0
    config = json.loads((tmp_path / "runs" / "cli" / "config.json").read_text())
    assert (config["epochs"], config["batch"], config["val_fraction"], config["ema"]) == (1, 256, 0.0, False)
    assert not (tmp_path / "runs" / "cli" / "curves.png").exists()


def test_predict_prints_and_saves(best: str, images: list[Path], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    json_path, csv_path = tmp_path / "out" / "preds.json", tmp_path / "preds.csv"
    code = main(["predict", "--model", best, "--source", str(images[0].parent), "--top-k", "3",
                 "--device", "cpu", "--save-json", str(json_path), "--save-csv", str(csv_path)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    expected = pigeon.predict(best, [str(p) for p in images], top_k=3, device="cpu")
    assert len(lines) == len(images) == len(expected)
    for line, pred in zip(lines, expected):
        assert line.startswith(f"{pred.source}: {pred.label} ({pred.top1_conf:.1%})  [")
        assert line.count("%") == 3  # the label and two alternatives

    saved = json.loads(json_path.read_text())
    assert [d["source"] for d in saved] == [str(p) for p in images]
    assert [d["label"] for d in saved] == [p.label for p in expected]
    assert all(len(d["top_k"]) == 3 for d in saved)
    assert saved[0] == expected[0].to_dict()

    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["source"] for r in rows] == [str(p) for p in images]
    assert [r["label"] for r in rows] == [p.label for p in expected]
    assert all(r["error"] == "" and len(r["top_k"].split(";")) == 3 for r in rows)
    assert float(rows[0]["confidence"]) == pytest.approx(expected[0].top1_conf, abs=1e-6)


def test_predict_top1_only_and_several_sources(best: str, images: list[Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--model", best, "--source", str(images[2]), str(images[0]), "--top-k", "1",
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(images[2]), str(images[0])]
    assert all("[" not in line for line in lines)  # no alternatives with --top-k 1


def test_predict_reports_a_bad_image_and_fails(best: str, images: list[Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = images[0].parent / "1b.png"
    bad.write_bytes(b"garbage")
    csv_path = tmp_path / "preds.csv"
    code = main(["predict", "--model", best, "--source", str(images[0].parent), "--device", "cpu",
                 "--save-csv", str(csv_path)])
    assert code == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    assert lines[2].startswith(f"{bad}: ERROR UnidentifiedImageError")
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[2]["label"] == "" and rows[2]["error"].startswith("UnidentifiedImageError")
    assert all(r["error"] == "" for i, r in enumerate(rows) if i != 2)


def test_predict_on_a_missing_path(best: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.png"
    assert main(["predict", "--model", best, "--source", str(missing), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"DatasetError: {missing}: no such file or folder; give an image file, a folder "
                            "or a glob pattern\n")


def test_predict_refuses_a_pickle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "model.pt").write_bytes(b"not even read")
    assert main(["predict", "--model", str(tmp_path / "model.pt"), "--source", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("CheckpointError: ")


def test_val_writes_a_report(best: str, digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["val", "--model", best, "--data", "digits", "--device", "cpu", "--no-plots",
                 "--project", str(tmp_path), "--name", "v"])
    assert code == 0
    report = json.loads((tmp_path / "v" / "report.json").read_text())
    assert report["top1"] == json.loads((digits_run / "summary.json").read_text())["test"]["top1"]
    out = capsys.readouterr().out
    assert f"top-1 {100 * report['top1']:.2f}%" in out and f"report written to {tmp_path / 'v'}" in out


def test_models_names_timm_and_torchvision_prefixes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "timm:<name>" in out and "tv:<name>" in out
    assert "--model timm:resnet18" in out and "--model tv:resnet18" in out
    assert "pip install" not in out  # both libraries are installed here


def test_models_filter_lists_matching_architectures(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--filter", "resnet1*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "timm:resnet18" in lines and "tv:resnet18" in lines
    assert "tv:resnet50" not in lines and "pigeon-n" not in lines
    assert all(line.partition(":")[2].startswith("resnet1") for line in lines)


def test_models_filter_without_a_match_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--filter", "no_such_net*"]) == 1
    assert capsys.readouterr().out == "no model matches 'no_such_net*'\n"


def test_train_freeze_epochs_without_weights_fails_with_a_message(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", "digits", "--freeze-epochs", "1", "--project", str(tmp_path / "runs")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("ConfigError: freeze_epochs needs weights")
    assert err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_train_with_missing_weights_fails_before_reading_data(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", str(tmp_path / "no-data"), "--weights", str(tmp_path / "nope.pth"),
                 "--project", str(tmp_path / "runs")])
    assert code == 1
    assert capsys.readouterr().err.startswith(f"CheckpointError: --weights {tmp_path / 'nope.pth'}: no such file")
    assert not (tmp_path / "runs").exists()


def test_train_fine_tunes_with_weights_freeze_and_backbone_lr(digits_folder, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    data = digits_folder(tmp_path / "d", splits=("train", "val"), per_class={"train": 4, "val": 2})
    common = ["--amp", "off", "--device", "cpu", "--no-ema", "--no-plots", "--no-verbose", "--epochs", "1",
              "--cache-dir", str(tmp_path / "cache"), "--project", str(tmp_path / "runs")]
    assert main(["train", "--data", str(data), "--imgsz", "16", "--name", "pre", *common]) == 0
    pre = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["best"]
    assert main(["train", "--data", str(data), "--weights", pre, "--freeze-epochs", "1", "--backbone-lr-mult", "0.2",
                 "--name", "fine", *common]) == 0
    capsys.readouterr()
    config = json.loads((tmp_path / "runs" / "fine" / "config.json").read_text())
    assert (config["weights"], config["freeze_epochs"], config["backbone_lr_mult"], config["imgsz"]) == (pre, 1, 0.2,
                                                                                                          16)
    meta = json.loads((tmp_path / "runs" / "fine" / "weights" / "best.meta.json").read_text())
    assert meta["pretrained"]["carried_classes"] == ["0", "1", "2"]


# -- export and bench -----------------------------------------------------------------------------------------------


def test_export_then_predict_with_the_export(best: str, images: list[Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exports" / "digits.onnx"
    assert main(["export", "--model", best, "--format", "onnx", "--out", str(out), "--check-images", "50",
                 "--dynamic-batch"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("parity on 50 real images: top-1 agreement ")
    assert lines[1].startswith(f"exported {best} -> {out} (")
    result = json.loads(lines[-1])
    assert result["path"] == str(out) and out.is_file()
    assert result["parity"]["images"] == 50 and result["parity"]["top1_agreement"] >= 0.995
    assert pigeon.load(out).meta["contract"]["parity"] == result["parity"]

    assert main(["predict", "--model", str(out), "--source", str(images[0].parent), "--top-k", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = pigeon.predict(best, [str(p) for p in images], top_k=1, device="cpu")
    assert [line.split(": ")[0] for line in lines] == [str(p) for p in images]
    assert [line.split(": ")[1].split(" (")[0] for line in lines] == [p.label for p in expected]


def test_export_quiet_prints_only_the_json(best: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.torchscript"
    assert main(["export", "--model", best, "--format", "torchscript", "--out", str(out), "--no-check",
                 "--no-verbose"]) == 0
    assert json.loads(capsys.readouterr().out) == {"path": str(out), "parity": None}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.torchscript", "m.torchscript.json"]


def test_export_refusals(best: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:  # argparse knows the formats
        main(["export", "--model", best, "--format", "xyz"])
    assert info.value.code == 2
    assert "invalid choice: 'xyz'" in capsys.readouterr().err

    out = str(tmp_path / "m.torchscript")
    assert main(["export", "--model", best, "--format", "torchscript", "--int8", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ConfigError: int8 is a post-training quantization") and err.count("\n") == 1

    assert main(["export", "--model", best, "--imgsz", "16", "--out", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ExportError: pigeon-p changes its layout between 8 and 16 px") and err.count("\n") == 1

    (tmp_path / "model.pt").write_bytes(b"never read")
    assert main(["export", "--model", str(tmp_path / "model.pt")]) == 1
    assert capsys.readouterr().err.startswith("CheckpointError: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # nothing was written


def test_bench_writes_its_results(best: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--model", best, "--formats", "torch", "--runs", "50", "--warmup", "0",
                 "--throughput-seconds", "0.2", "--project", str(tmp_path), "--name", "b"]) == 0
    out = capsys.readouterr().out
    assert "| torch | 8px |" in out and f"results written to {tmp_path / 'b'}" in out
    saved = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert [(r["format"], r["imgsz"], r["latency_runs"]) for r in saved["rows"]] == [("torch", 8, 50)]
    assert (tmp_path / "b" / "bench.md").read_text().count("| torch | 8px |") == 1


def test_bench_refusals(best: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--model", best, "--runs", "10", "--project", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "ConfigError: runs=10 is out of range; it must be >= 50\n"
    assert main(["bench", "--model", best, "--formats", "torch,xyz", "--project", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("ConfigError: formats='xyz' is not valid")
    assert list(tmp_path.iterdir()) == []
