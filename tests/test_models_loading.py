"""Loading checkpoints: official key formats, safetensors, wrappers, mismatches, unsafe pickles."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from napari_vfmseg.models import (
    CheckpointMismatchError,
    ModelDownloadError,
    UnsafeCheckpointError,
    fingerprint_state_dict,
    get_spec,
    load_model,
    read_state_dict,
)
from napari_vfmseg.models.registry import ARCHITECTURES
from napari_vfmseg.models.tiny_vit import TinyViT, build_sam_vit_t


def _save_both(state: dict, folder: Path, stem: str) -> tuple[Path, Path]:
    pth, st = folder / f"{stem}.pth", folder / f"{stem}.safetensors"
    torch.save(state, pth)
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    return pth, st


@pytest.fixture(scope="module")
def vit_b_files(tmp_path_factory):
    """A random-init SAM ViT-B in the official key format, as .pth and .safetensors (built once)."""
    from segment_anything import build_sam_vit_b

    torch.manual_seed(0)
    state = build_sam_vit_b(None).state_dict()
    pth, st = _save_both(state, tmp_path_factory.mktemp("vit_b"), "sam_vit_b_random")
    return state, pth, st


@pytest.fixture(scope="module")
def vit_t_state():
    """A random-init MobileSAM (TinyViT encoder) state dict in the released key layout."""
    torch.manual_seed(1)
    return build_sam_vit_t().state_dict()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("VFMSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _assert_same_weights(model, state: dict) -> None:
    loaded = model.sam.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key].cpu(), value), key


def test_vit_b_pth_and_safetensors_load_identically(vit_b_files):
    state, pth, st = vit_b_files
    from_pth = load_model(pth, device="cpu")
    from_st = load_model(str(st), device="cpu")
    for model, path in ((from_pth, pth), (from_st, st)):
        assert model.arch == "vit_b"  # inferred from the state dict
        assert model.name == str(path)
        assert model.device == torch.device("cpu")
        assert model.encoder_dtype is None
        assert model.image_size == 1024
        assert model.info["source_file"] == str(path)
        assert not model.sam.training
        _assert_same_weights(model, state)
    assert from_pth.fingerprint == from_st.fingerprint == fingerprint_state_dict(state)
    assert from_pth.info["encoder_parameters"] == sum(
        v.numel() for k, v in state.items() if k.startswith("image_encoder.")
    )


def test_registry_architecture_with_own_checkpoint(vit_t_state, tmp_path):
    path = tmp_path / "finetuned_mobilesam.pth"
    torch.save(vit_t_state, path)
    model = load_model("mobilesam_vit_t", device="cpu", checkpoint=path)
    assert model.arch == "vit_t"
    assert model.name == str(path)
    assert model.info["registry_name"] == "mobilesam_vit_t"
    assert model.info["licence"] == "Apache-2.0"
    _assert_same_weights(model, vit_t_state)
    with pytest.raises(ValueError, match="cannot change"):
        load_model("vit_b", arch="vit_h", checkpoint=path)
    with pytest.raises(ValueError, match="checkpoint= only goes with a registry model"):
        load_model(path, checkpoint=path)
    # a registry architecture does not accept another architecture's weights
    with pytest.raises(CheckpointMismatchError, match="medsam|vit_b"):
        load_model("medsam_vit_b", device="cpu", checkpoint=path)


def test_fingerprint_matches_the_base_function():
    from napari_vfmseg.models.loading import weights_fingerprint

    torch.manual_seed(2)
    plain = {"w": torch.randn(3, 4), "b": torch.randn(4).half(), "flag": torch.tensor(3, dtype=torch.uint8)}
    assert weights_fingerprint(plain) == fingerprint_state_dict(plain)
    with_counter = {**plain, "bn.num_batches_tracked": torch.tensor(5)}
    other_counter = {**plain, "bn.num_batches_tracked": torch.tensor(6)}
    assert weights_fingerprint(with_counter) != weights_fingerprint(other_counter)
    assert weights_fingerprint(with_counter) != weights_fingerprint(plain)
    assert len(weights_fingerprint(with_counter)) == 16


def test_different_weights_give_different_fingerprints(vit_t_state, tmp_path):
    changed = dict(vit_t_state)
    key = "mask_decoder.iou_prediction_head.layers.0.bias"
    changed[key] = changed[key] + 1e-3
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(vit_t_state, a)
    torch.save(changed, b)
    assert load_model(a, device="cpu").fingerprint != load_model(b, device="cpu").fingerprint


def test_mobilesam_key_layout_loads_into_tinyvit(vit_t_state, tmp_path):
    # the layout of the released mobile_sam.pt, independently of our module code
    expected_shapes = {
        "image_encoder.patch_embed.seq.0.c.weight": (32, 3, 3, 3),
        "image_encoder.patch_embed.seq.2.bn.running_var": (64,),
        "image_encoder.layers.0.blocks.1.conv2.c.weight": (256, 1, 3, 3),
        "image_encoder.layers.0.downsample.conv1.c.weight": (128, 64, 1, 1),
        "image_encoder.layers.1.blocks.0.attn.attention_biases": (4, 49),
        "image_encoder.layers.1.blocks.0.attn.qkv.weight": (384, 128),
        "image_encoder.layers.2.blocks.5.attn.attention_biases": (5, 196),
        "image_encoder.layers.2.downsample.conv2.c.weight": (320, 1, 3, 3),
        "image_encoder.layers.3.blocks.1.mlp.fc1.weight": (1280, 320),
        "image_encoder.layers.3.blocks.1.local_conv.c.weight": (320, 1, 3, 3),
        "image_encoder.norm_head.weight": (320,),
        "image_encoder.head.weight": (1000, 320),
        "image_encoder.neck.0.weight": (256, 320, 1, 1),
        "image_encoder.neck.3.bias": (256,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(vit_t_state[key].shape) == shape, key
    assert "image_encoder.layers.3.downsample.conv1.c.weight" not in vit_t_state
    assert not any("attention_bias_idxs" in k for k in vit_t_state)  # a non-persistent buffer

    path = tmp_path / "mobile_sam.pt"
    torch.save(vit_t_state, path)
    model = load_model(path, device="cpu")
    assert model.arch == "vit_t"
    assert isinstance(model.sam.image_encoder, TinyViT)
    _assert_same_weights(model, vit_t_state)
    encoder_params = model.info["encoder_parameters"]
    head = model.sam.image_encoder.head.weight.numel() + model.sam.image_encoder.head.bias.numel()
    head += 2 * 320  # norm_head
    assert 5.6e6 < encoder_params - head < 5.9e6  # TinyViT-5M + neck, as MobileSAM reports
    with torch.no_grad():
        embedding = model.sam.image_encoder(torch.randn(1, 3, 1024, 1024))
    assert embedding.shape == (1, 256, 64, 64)
    assert torch.isfinite(embedding).all()


def test_tinyvit_attention_bias_is_shared_by_equal_offsets():
    from napari_vfmseg.models.tiny_vit import relative_offset_index

    idx = relative_offset_index(3)
    assert idx.shape == (9, 9)
    assert idx.max().item() == 8 and idx.diagonal().eq(0).all()
    # token 0 = (0, 0), token 5 = (1, 2), token 7 = (2, 1): offsets (1, 2) and (2, 1) differ
    assert idx[0, 5].item() == 1 * 3 + 2 and idx[0, 7].item() == 2 * 3 + 1
    assert idx[5, 0] == idx[0, 5]  # absolute offsets: symmetric


def test_wrapped_and_prefixed_checkpoints_are_unwrapped(vit_t_state, tmp_path):
    from napari_vfmseg.models.loading import weights_fingerprint

    fingerprint = weights_fingerprint(vit_t_state)
    medsam_style = {"model": vit_t_state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "epoch": 7}
    ddp_style = {"state_dict": {f"module.{k}": v for k, v in vit_t_state.items()}}
    for name, payload in (("medsam_style.pth", medsam_style), ("ddp_style.pth", ddp_style)):
        path = tmp_path / name
        torch.save(payload, path)
        model = load_model(path, device="cpu")
        assert model.arch == "vit_t", name
        assert model.fingerprint == fingerprint, name


def test_mismatched_checkpoint_lists_keys_and_counts(vit_t_state, tmp_path):
    broken = dict(vit_t_state)
    removed = ["image_encoder.neck.0.weight", "mask_decoder.iou_token.weight", "prompt_encoder.no_mask_embed.weight"]
    for key in removed:
        del broken[key]
    broken["image_encoder.extra_adapter.weight"] = torch.zeros(3)
    broken["image_encoder.layers.1.blocks.0.attn.attention_biases"] = torch.zeros(4, 50)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_model(path, device="cpu")
    message = str(err.value)
    assert str(path) in message and "'vit_t'" in message
    assert "3 missing keys" in message and all(k in message for k in removed)
    assert "1 unexpected keys: image_encoder.extra_adapter.weight" in message
    assert "attention_biases (checkpoint (4, 50), model (4, 49))" in message
    assert sorted(err.value.missing) == sorted(removed)


def test_wrong_architecture_error_counts_the_differences(vit_t_state, tmp_path):
    path = tmp_path / "mobile_sam.pt"
    torch.save(vit_t_state, path)
    with torch.device("meta"):
        vit_b_keys = set(ARCHITECTURES["vit_b"].builder().state_dict())
    missing = vit_b_keys - set(vit_t_state)
    unexpected = set(vit_t_state) - vit_b_keys
    with pytest.raises(CheckpointMismatchError) as err:
        load_model(path, device="cpu", arch="vit_b")
    message = str(err.value)
    assert f"{len(missing)} missing keys" in message
    assert f"{len(unexpected)} unexpected keys" in message
    assert f"({len(missing) - 5} more)" in message  # first few shown, the rest counted
    assert set(err.value.missing) == missing and set(err.value.unexpected) == unexpected


class _RunsCommand:
    """Unpickling this would call os.system(command)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_code_running_pickle_is_refused_and_not_executed(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {"image_encoder.patch_embed.proj.weight": torch.zeros(1), "x": _RunsCommand(f"touch '{marker}'")}
    path = tmp_path / "evil.pth"
    if writer == "pickle":
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    else:
        torch.save(payload, path)
    with pytest.raises(UnsafeCheckpointError, match="refused to load .*evil.pth") as err:
        load_model(path, device="cpu")
    assert str(path) in str(err.value)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        read_state_dict(path)
    assert not marker.exists()


def test_missing_and_unreadable_files_are_named(tmp_path, home):
    missing = tmp_path / "nowhere" / "sam.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_model(missing)
    with pytest.raises(FileNotFoundError, match="'vit_q' is not a registry model either"):
        load_model("vit_q")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_model(garbage)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_model(bad_st)
    not_sam = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(2, 2)}, not_sam)
    with pytest.raises(ValueError, match="resnet.pth is not a SAM-format checkpoint"):
        load_model(not_sam)


def test_registry_model_without_weights_offline(home):
    spec = get_spec("vit_b")
    with pytest.raises(ModelDownloadError) as err:
        load_model("vit_b", device="cpu", download=False)
    message = str(err.value)
    assert spec.url in message and spec.sha256 in message
    assert str(home.resolve() / "weights" / spec.filename) in message


def test_bad_device_fails_before_reading_the_file(tmp_path):
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        load_model(tmp_path / "missing.pth", device="gpu")
