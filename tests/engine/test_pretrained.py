"""Starting weights: read from every source without running code, then fitted all-or-nothing to a new model."""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pigeon.data.preprocess import Preprocess
from pigeon.engine import checkpoint
from pigeon.engine.pretrained import Transfer, Weights, fit_weights, read_weights
from pigeon.errors import CheckpointError, ConfigError
from pigeon.models import create_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _model(name: str = "pigeon-n", num_classes: int = 3, in_chans: int = 1, imgsz: int = 16,
           seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, imgsz=imgsz)
    model.train()(torch.randn(4, in_chans, imgsz, imgsz))  # move BatchNorm statistics off their defaults
    return model.eval()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _pigeon_checkpoint(path: Path, classes: list[str], model_name: str = "pigeon-n", in_chans: int = 1,
                       imgsz: int = 16, seed: int = 0) -> tuple[Path, nn.Module]:
    model = _model(model_name, num_classes=len(classes), in_chans=in_chans, imgsz=imgsz, seed=seed)
    mean = (0.5,) * in_chans
    meta = {"model": model_name, "classes": classes,
            "preprocess": Preprocess(imgsz=imgsz, channels=in_chans, mean=mean, std=mean).to_dict()}
    return checkpoint.save(path, model, meta), model


# --- reading -------------------------------------------------------------------------------------------------


def test_pigeon_checkpoint_is_read_with_its_model_classes_and_preprocessing(tmp_path: Path) -> None:
    path, model = _pigeon_checkpoint(tmp_path / "best.safetensors", ["cat", "dog"], imgsz=16)
    weights = read_weights(str(path), "pigeon-n")
    assert weights.source == str(path)
    assert weights.model == "pigeon-n"
    assert weights.classes == ("cat", "dog")
    assert weights.preprocess is not None and weights.preprocess["imgsz"] == 16
    assert weights.preprocess["channels"] == 1
    _assert_same_state(weights.state, _state(model))


def test_plain_safetensors_is_read_as_a_bare_state_dict(tmp_path: Path) -> None:
    model = _model()
    save_file(_state(model), str(tmp_path / "w.safetensors"))
    weights = read_weights(str(tmp_path / "w.safetensors"), "pigeon-n")
    assert (weights.model, weights.classes, weights.preprocess) == (None, None, None)
    _assert_same_state(weights.state, _state(model))


@pytest.mark.parametrize("layout", ["bare", "state_dict", "model_with_extras", "module_prefix",
                                    "wrapped_module_prefix"])
@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_pth_state_dict_is_found_inside_common_wrappers(layout: str, suffix: str, tmp_path: Path) -> None:
    model = _model()
    state = _state(model)
    prefixed = {f"module.{k}": v for k, v in state.items()}
    obj: Any = {
        "bare": state,
        "state_dict": {"state_dict": state},
        "model_with_extras": {"model": state, "epoch": 7, "optimizer": {"lr": 0.1}},
        "module_prefix": prefixed,
        "wrapped_module_prefix": {"state_dict": prefixed, "epoch": 3},
    }[layout]
    path = tmp_path / f"weights{suffix}"
    torch.save(obj, path)
    weights = read_weights(str(path), "pigeon-n")
    assert weights.classes is None and weights.model is None
    _assert_same_state(weights.state, state)


@pytest.mark.parametrize("obj", [{"epoch": 3, "note": "no tensors"}, [torch.zeros(2)], {}])
def test_pth_without_a_state_dict_is_refused(obj: Any, tmp_path: Path) -> None:
    torch.save(obj, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        read_weights(str(tmp_path / "w.pth"), "pigeon-n")


class _OpenFile:
    """Unpickling this calls open(path, "w"): creates the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


class _Shell:
    """Unpickling this runs a shell command that creates the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch '{self.path}'",))


@pytest.mark.parametrize("payload", [_OpenFile, _Shell])
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_without_running_its_code(payload: type, writer: str, tmp_path: Path) -> None:
    victim = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    obj = {"state_dict": {"fc.weight": torch.zeros(2, 2)}, "extra": payload(victim)}
    if writer == "torch.save":
        torch.save(obj, path)
    else:  # the legacy (non-zip) format; protocol 2 is what torch itself writes there
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=2)
    assert not victim.exists()
    with pytest.raises(CheckpointError, match="refused; loading it would run code stored in the file"):
        read_weights(str(path), "pigeon-n")
    assert not victim.exists()


def test_truncated_pth_is_a_checkpoint_error(tmp_path: Path) -> None:
    torch.save(_state(_model()), tmp_path / "full.pth")
    raw = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch file.*truncated"):
        read_weights(str(tmp_path / "cut.pth"), "pigeon-n")


@pytest.mark.parametrize("content", [b"", b"hello, this is not a pickle"])
def test_empty_or_junk_pth_is_a_checkpoint_error(content: bytes, tmp_path: Path) -> None:
    (tmp_path / "bad.pth").write_bytes(content)
    with pytest.raises(CheckpointError):
        read_weights(str(tmp_path / "bad.pth"), "pigeon-n")


@pytest.mark.parametrize("pigeon_meta", [False, True])
def test_truncated_safetensors_is_a_checkpoint_error(pigeon_meta: bool, tmp_path: Path) -> None:
    full = tmp_path / "full.safetensors"
    if pigeon_meta:
        _pigeon_checkpoint(full, ["a", "b"])
    else:
        save_file(_state(_model()), str(full))
    raw = full.read_bytes()
    for keep, name in ((len(raw) // 2, "half"), (5, "head")):
        cut = tmp_path / f"{name}.safetensors"
        cut.write_bytes(raw[:keep])
        with pytest.raises(CheckpointError, match="not a readable safetensors file.*truncated"):
            read_weights(str(cut), "pigeon-n")


def test_tampered_pigeon_checkpoint_is_refused(tmp_path: Path) -> None:
    path, _ = _pigeon_checkpoint(tmp_path / "best.safetensors", ["a", "b"])
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01  # one bit in the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="do not match the digest"):
        read_weights(str(path), "pigeon-n")


def test_missing_weights_file_names_the_sources(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no such file.*'timm' or hf-hub:org/repo"):
        read_weights(str(tmp_path / "nope.pth"), "pigeon-n")


def test_timm_weights_need_a_timm_model() -> None:
    with pytest.raises(ConfigError, match=r"needs a timm:<name> model, not 'tv:resnet18'"):
        read_weights("timm", "tv:resnet18")
    with pytest.raises(ConfigError, match="needs a timm:<name> model, not 'pigeon-n'"):
        read_weights("timm", "pigeon-n")


# --- the Hugging Face hub ------------------------------------------------------------------------------------


@pytest.fixture
def dead_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """HF_ENDPOINT on a local port that is bound but not listening: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        monkeypatch.setenv("HF_ENDPOINT", url)
        yield url


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def _cache_file(cache: Path, repo: str, filename: str, state: dict[str, torch.Tensor]) -> Path:
    """One file laid out as huggingface_hub caches it: refs/main names a snapshot holding the file."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    path = root / "snapshots" / COMMIT / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def test_hub_weights_are_found_in_the_local_cache_offline(hf_cache: Path, dead_endpoint: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _model()
    _cache_file(hf_cache, "org/repo", "model.safetensors", _state(model))
    other = {"w": torch.arange(3.0)}
    _cache_file(hf_cache, "org/repo", "sub/other.safetensors", other)

    weights = read_weights("hf-hub:org/repo", "pigeon-n")
    assert weights.source == "hf-hub:org/repo"
    _assert_same_state(weights.state, _state(model))
    _assert_same_state(read_weights("hf-hub:org/repo/sub/other.safetensors", "pigeon-n").state, other)


def test_timm_default_weights_come_from_the_hub_cache(hf_cache: Path, dead_endpoint: str) -> None:
    import timm.models

    hub_id = timm.models.get_pretrained_cfg("test_resnet").hf_hub_id
    source = create_model("timm:test_resnet", num_classes=1000, in_chans=3, imgsz=32)
    _cache_file(hf_cache, hub_id, "model.safetensors", _state(source))
    weights = read_weights("timm", "timm:test_resnet")
    assert "timm default weights of timm:test_resnet" in weights.source

    target = create_model("timm:test_resnet", num_classes=4, in_chans=1, imgsz=32)
    transfer = fit_weights(target, weights, ["a", "b", "c", "d"], "timm:test_resnet")
    assert transfer.channels == "3 -> 1 channels (summed)"
    torch.testing.assert_close(target.conv1[0].weight, source.conv1[0].weight.sum(dim=1, keepdim=True))
    assert target.fc.weight.shape == (4, target.fc.in_features)


def test_hub_weights_missing_from_the_cache_with_an_unreachable_endpoint_fail_fast(hf_cache: Path,
                                                                                   dead_endpoint: str) -> None:
    with pytest.raises(CheckpointError, match=rf"hf-hub:org/absent/model.safetensors is not in the local cache and "
                                              rf"{dead_endpoint} cannot be reached.*huggingface-cli download"):
        read_weights("hf-hub:org/absent", "pigeon-n")


def test_hub_weights_missing_from_the_cache_offline_fail(hf_cache: Path, dead_endpoint: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _cache_file(hf_cache, "org/repo", "model.safetensors", {"w": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="hf-hub:org/repo/other.safetensors is not in the local cache and "
                                              "HF_HUB_OFFLINE is set"):
        read_weights("hf-hub:org/repo/other.safetensors", "pigeon-n")


@pytest.mark.parametrize("spec", ["hf-hub:org", "hf-hub:", "hf-hub:org//file"])
def test_malformed_hub_id_is_a_config_error(spec: str, hf_cache: Path, dead_endpoint: str) -> None:
    with pytest.raises(ConfigError, match="is not a hub id; write hf-hub:org/repo"):
        read_weights(spec, "pigeon-n")


# --- fitting -------------------------------------------------------------------------------------------------


def test_same_architecture_loads_every_tensor_but_the_head(tmp_path: Path) -> None:
    source = _model(num_classes=5, seed=1)
    weights = Weights(source="src", state=_state(source))
    target = _model(num_classes=3, seed=2)
    head_before = target.fc.weight.detach().clone()
    transfer = fit_weights(target, weights, ["a", "b", "c"], "pigeon-n")

    after = _state(target)
    body = [k for k in after if not k.startswith("fc.")]
    for key in body:
        assert torch.equal(after[key], source.state_dict()[key]), key
    assert torch.equal(target.fc.weight, head_before)  # a fresh head: the source's has 5 unnamed classes
    assert transfer == Transfer(source="src", tensors=len(body),
                                head="new, 3 classes (the source does not name its classes)")
    assert transfer.describe() == (f"loaded {len(body)} tensors from src; head: new, 3 classes (the source does "
                                   "not name its classes)")


def test_shape_mismatch_names_the_tensor_and_loads_nothing() -> None:
    weights = Weights(source="big.safetensors", state=_state(_model("pigeon-s", seed=1)))
    target = _model("pigeon-n", seed=2)
    before = _state(target)
    with pytest.raises(CheckpointError) as info:
        fit_weights(target, weights, ["a", "b", "c"], "pigeon-n")
    message = str(info.value)
    assert message.startswith("big.safetensors does not fit pigeon-n (shape differs ")
    assert "stem.0.weight (64, 1, 3, 3) vs (32, 1, 3, 3)" in message
    assert "nothing was loaded" in message
    assert "use the --model these weights were saved from" in message
    _assert_same_state(_state(target), before)


def test_missing_and_unexpected_tensors_are_named_and_nothing_is_loaded() -> None:
    state = _state(_model(seed=1))
    del state["stages.2.2.bn2.weight"]
    state["extra.weight"] = torch.zeros(3)
    target = _model(seed=2)
    before = _state(target)
    with pytest.raises(CheckpointError, match=r"missing 1: stages\.2\.2\.bn2\.weight; unexpected 1: extra\.weight\)"
                                              r"; nothing was loaded"):
        fit_weights(target, Weights(source="w.pth", state=state), ["a", "b", "c"], "pigeon-n")
    _assert_same_state(_state(target), before)


def test_missing_batchnorm_counters_are_tolerated() -> None:
    source = _model(seed=1)
    state = {k: v for k, v in _state(source).items() if not k.endswith("num_batches_tracked")}
    target = _model(seed=2)
    fit_weights(target, Weights(source="w", state=state), ["a", "b", "c"], "pigeon-n")
    torch.testing.assert_close(target.stem[0].weight, source.stem[0].weight, rtol=0, atol=0)


def test_pigeon_checkpoint_of_another_model_suggests_its_model(tmp_path: Path) -> None:
    path, _ = _pigeon_checkpoint(tmp_path / "n.safetensors", ["a", "b"], model_name="pigeon-n")
    target = _model("pigeon-s")
    before = _state(target)
    with pytest.raises(CheckpointError, match=r"nothing was loaded\. Fix: the weights were trained as pigeon-n: use "
                                              r"--model pigeon-n"):
        fit_weights(target, read_weights(str(path), "pigeon-s"), ["a", "b"], "pigeon-s")
    _assert_same_state(_state(target), before)


def test_pigeon_checkpoint_at_another_size_suggests_its_imgsz(tmp_path: Path) -> None:
    path, _ = _pigeon_checkpoint(tmp_path / "n8.safetensors", ["a", "b"], imgsz=8)  # no stem pool below 16 px
    target = _model(imgsz=32)
    before = _state(target)
    with pytest.raises(CheckpointError, match=r"use --imgsz 8, the size these weights were trained at"):
        fit_weights(target, read_weights(str(path), "pigeon-n"), ["a", "b", "c"], "pigeon-n")
    _assert_same_state(_state(target), before)


@pytest.mark.parametrize(("have", "want", "how"), [(3, 1, "summed"), (1, 3, "repeated")])
def test_first_layer_is_converted_between_grey_and_rgb(have: int, want: int, how: str) -> None:
    source = _model(in_chans=have, seed=1)
    target = _model(in_chans=want, seed=2)
    transfer = fit_weights(target, Weights(source="w", state=_state(source)), ["a", "b", "c"], "pigeon-n")
    assert transfer.channels == f"{have} -> {want} channels ({how})"
    assert transfer.describe().endswith(f"; first layer: {have} -> {want} channels ({how})")
    src_w = source.stem[0].weight.detach()
    expected = src_w.sum(dim=1, keepdim=True) if want == 1 else src_w.repeat(1, 3, 1, 1) / 3
    torch.testing.assert_close(target.stem[0].weight.detach(), expected)
    torch.testing.assert_close(target.stages[1][0][0].weight, source.stages[1][0][0].weight, rtol=0, atol=0)
    # The converted network sees a grey image as the original did.
    grey = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        src_in, dst_in = (grey.repeat(1, have, 1, 1), grey.repeat(1, want, 1, 1))
        torch.testing.assert_close(target.forward_features(dst_in), source.forward_features(src_in),
                                   rtol=1e-4, atol=1e-5)


def test_head_rows_are_carried_over_by_class_name(tmp_path: Path) -> None:
    path, source = _pigeon_checkpoint(tmp_path / "pets.safetensors", ["cat", "dog", "fish"], seed=1)
    target = _model(num_classes=3, seed=2)
    init_w, init_b = target.fc.weight.detach().clone(), target.fc.bias.detach().clone()
    classes = ["dog", "bird", "cat"]
    transfer = fit_weights(target, read_weights(str(path), "pigeon-n"), classes, "pigeon-n")

    src_w, src_b = source.fc.weight.detach(), source.fc.bias.detach()
    assert torch.equal(target.fc.weight[0], src_w[1]) and torch.equal(target.fc.bias[0], src_b[1])  # dog
    assert torch.equal(target.fc.weight[2], src_w[0]) and torch.equal(target.fc.bias[2], src_b[0])  # cat
    assert torch.equal(target.fc.weight[1], init_w[1]) and torch.equal(target.fc.bias[1], init_b[1])  # bird: new
    assert transfer.carried_classes == ("dog", "cat")
    assert transfer.head == "carried 2 of 3 classes over by name, the rest new"
    assert transfer.to_dict() == {"source": str(path), "tensors": transfer.tensors, "head": transfer.head,
                                  "carried_classes": ["dog", "cat"], "channels": None, "resampled": None}


def test_head_is_fresh_when_no_class_name_is_shared(tmp_path: Path) -> None:
    path, _ = _pigeon_checkpoint(tmp_path / "pets.safetensors", ["cat", "dog"], seed=1)
    target = _model(num_classes=2, seed=2)
    init_w = target.fc.weight.detach().clone()
    transfer = fit_weights(target, read_weights(str(path), "pigeon-n"), ["car", "bus"], "pigeon-n")
    assert transfer.carried_classes == ()
    assert transfer.head == "new, 2 classes (no class names in common with the source)"
    assert torch.equal(target.fc.weight, init_w)


def test_vit_position_embeddings_are_resampled_to_the_new_input_size() -> None:
    source = create_model("timm:test_vit", num_classes=10, in_chans=3, imgsz=32)
    target = create_model("timm:test_vit", num_classes=2, in_chans=3, imgsz=64)
    key = next(k for k in target.state_dict() if k.endswith("pos_embed"))
    assert source.state_dict()[key].shape[1] < target.state_dict()[key].shape[1]  # more patches at 64 px
    transfer = fit_weights(target, Weights("vit.safetensors", source.state_dict()), ["a", "b"], "timm:test_vit")
    assert transfer.resampled == f"{key} resampled to the new input size"
    prefix = target.num_prefix_tokens
    # The class token's embedding is copied as is; the patch grid is interpolated, not left at its init.
    assert torch.equal(target.state_dict()[key][:, :prefix], source.state_dict()[key][:, :prefix])
    assert target(torch.zeros(1, 3, 64, 64)).shape == (1, 2)
