"""The model registry: spec contents, presence flags, verified weights, offline download errors, CLI."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import pytest
import torch

import napari_vfmseg
from napari_vfmseg.cli import main
from napari_vfmseg.models import (
    ARCHITECTURES,
    ModelDownloadError,
    ModelSpec,
    WeightsIntegrityError,
    ensure_weights,
    get_spec,
    infer_arch,
    list_models,
    load_model,
    model_names,
    register_model,
    unregister_model,
    weights_dir,
)
from napari_vfmseg.models import download as download_module

from _tiny_models import build_tiny_sam

OFFICIAL = {"vit_b", "vit_l", "vit_h", "medsam_vit_b", "mobilesam_vit_t"}
# A loopback port nothing listens on: the connection is refused at once, no traffic leaves the machine.
UNREACHABLE = "http://127.0.0.1:9/weights/model.pth"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("VFMSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _spec_for_file(name: str, payload: bytes, *, url: str = UNREACHABLE, with_sha: bool = True, **kwargs) -> ModelSpec:
    return ModelSpec(
        name=name,
        arch=kwargs.pop("arch", "vit_b"),
        builder=kwargs.pop("builder", lambda: build_tiny_sam()),
        image_size=kwargs.pop("image_size", 128),
        filename=f"{name}.bin",
        licence="CC0-1.0",
        description="test weights",
        url=url,
        sha256=hashlib.sha256(payload).hexdigest() if with_sha else None,
        size_bytes=len(payload),
        **kwargs,
    )


def test_registry_lists_the_official_models_with_complete_specs():
    assert OFFICIAL <= set(model_names())
    for name in OFFICIAL:
        spec = get_spec(name)
        assert spec.name == name
        assert spec.arch in ARCHITECTURES
        assert callable(spec.builder)
        assert spec.image_size == 1024
        assert spec.url.startswith("https://")
        assert spec.url.rsplit("/", 1)[-1] == spec.filename
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
        assert spec.size_bytes > 10_000_000
        assert spec.licence == "Apache-2.0"
        assert len(spec.description) > 10
        assert spec.package_file is None
    # the architectures follow the encoders, and MedSAM keeps its own input convention
    assert {n: get_spec(n).arch for n in OFFICIAL} == {
        "vit_b": "vit_b", "vit_l": "vit_l", "vit_h": "vit_h", "medsam_vit_b": "vit_b", "mobilesam_vit_t": "vit_t"
    }
    assert get_spec("medsam_vit_b").preprocess == "medsam"
    assert {get_spec(n).preprocess for n in OFFICIAL - {"medsam_vit_b"}} == {"sam"}
    # larger encoders have larger files; the digests are all different
    sizes = [get_spec(n).size_bytes for n in ("mobilesam_vit_t", "vit_b", "vit_l", "vit_h")]
    assert sizes == sorted(sizes)
    assert len({get_spec(n).sha256 for n in OFFICIAL}) == len(OFFICIAL)


def test_official_urls_and_digests_are_the_published_ones():
    vit_b = get_spec("vit_b")
    assert vit_b.url == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    assert vit_b.sha256 == "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
    assert get_spec("vit_h").url.endswith("/sam_vit_h_4b8939.pth")
    assert get_spec("vit_l").url.endswith("/sam_vit_l_0b3195.pth")
    assert "ChaoningZhang/MobileSAM" in get_spec("mobilesam_vit_t").url


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'vit_z'.*vit_b"):
        get_spec("vit_z")


def test_spec_validation_rejects_bad_entries():
    with pytest.raises(ValueError, match="sha256"):
        ModelSpec("x", "vit_b", build_tiny_sam, 128, "x.pth", "MIT", "d", url=UNREACHABLE, sha256="abc")
    with pytest.raises(ValueError, match="url or a package_file"):
        ModelSpec("x", "vit_b", build_tiny_sam, 128, "x.pth", "MIT", "d")
    with pytest.raises(ValueError, match="lower-case"):
        ModelSpec("Bad Name", "vit_b", build_tiny_sam, 128, "x.pth", "MIT", "d", url=UNREACHABLE)
    with pytest.raises(ValueError, match="already registered"):
        register_model(get_spec("vit_b"))


def test_list_models_reports_presence_in_vfmseg_home(home):
    records = {r["name"]: r for r in list_models()}
    assert set(records) == set(model_names())
    # only the built-in model, whose weights ship inside the package, is present in an empty home
    assert not any(r["present"] for n, r in records.items() if n != "builtin")
    for name in OFFICIAL:
        assert records[name]["path"] == str(home.resolve() / "weights" / get_spec(name).filename)
        assert records[name]["verification"] == "sha256"
    json.dumps(records)  # JSON-ready

    # a file of the right size counts as present (a sparse file, no 40 MB written); a wrong size does not
    spec = get_spec("mobilesam_vit_t")
    target = weights_dir() / spec.filename
    target.parent.mkdir(parents=True)
    with open(target, "wb") as handle:
        handle.truncate(spec.size_bytes)
    vit_b_target = weights_dir() / get_spec("vit_b").filename
    vit_b_target.write_bytes(b"truncated download")
    records = {r["name"]: r for r in list_models()}
    assert records["mobilesam_vit_t"]["present"] is True
    assert records["vit_b"]["present"] is False
    assert sum(r["present"] for n, r in records.items() if n != "builtin") == 1


def test_present_file_is_checked_by_size_and_sha256_once(home, monkeypatch):
    payload = b"weights-bytes" * 100
    spec = _spec_for_file("checked", payload)
    path = spec.local_path()
    path.parent.mkdir(parents=True)

    path.write_bytes(payload[:-1])  # wrong size
    with pytest.raises(WeightsIntegrityError, match=r"has 1299 bytes.*1300 bytes"):
        ensure_weights(spec)

    path.write_bytes(payload[::-1])  # right size, wrong content
    with pytest.raises(WeightsIntegrityError, match=f"weights have sha256 {spec.sha256}") as err:
        ensure_weights(spec)
    assert hashlib.sha256(payload[::-1]).hexdigest() in str(err.value)
    assert str(path) in str(err.value)

    path.write_bytes(payload)
    assert ensure_weights(spec) == path
    assert (path.parent / (path.name + ".verified.json")).is_file()

    # the verdict is remembered for this file version: no second hash ...
    def no_hashing(_path):
        raise AssertionError("hashed again")

    monkeypatch.setattr(download_module, "sha256_file", no_hashing)
    assert ensure_weights(spec) == path
    # ... until the file changes
    path.write_bytes(payload[::-1])
    with pytest.raises(AssertionError, match="hashed again"):
        ensure_weights(spec)


def test_offline_download_fails_fast_with_instructions(home):
    spec = _spec_for_file("offline_model", b"x" * 64)
    started = time.perf_counter()
    with pytest.raises(ModelDownloadError) as err:
        ensure_weights(spec, progress=False, timeout=2.0)
    elapsed = time.perf_counter() - started
    message = str(err.value)
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert UNREACHABLE in message
    assert spec.sha256 in message
    assert str(home.resolve() / "weights" / "offline_model.bin") in message
    assert "64 bytes" in message
    assert not spec.local_path().exists()  # nothing half-written


def test_official_model_offline_message_names_url_digest_and_path(home):
    spec = get_spec("vit_b")
    with pytest.raises(ModelDownloadError) as err:
        ensure_weights(spec, progress=False, timeout=2.0, url=UNREACHABLE)
    message = str(err.value)
    assert spec.url in message and spec.sha256 in message
    assert str(home.resolve() / "weights" / "sam_vit_b_01ec64.pth") in message
    # with downloads turned off the same instructions come without any network use
    with pytest.raises(ModelDownloadError, match="downloading is turned off") as err:
        ensure_weights(spec, allow_download=False)
    assert spec.url in str(err.value) and spec.sha256 in str(err.value)


def test_spec_without_published_digest_says_size_only(home):
    spec = _spec_for_file("sizeonly", b"y" * 10, with_sha=False)
    with pytest.raises(ModelDownloadError, match="sha256 not published; checked by size only"):
        ensure_weights(spec, allow_download=False)
    spec.local_path().parent.mkdir(parents=True)
    spec.local_path().write_bytes(b"z" * 10)
    assert ensure_weights(spec) == spec.local_path()


def test_package_file_spec_resolves_inside_the_package(home):
    spec = ModelSpec(
        name="shipped_test",
        arch="builtin",
        builder=build_tiny_sam,
        image_size=128,
        filename="shipped_test.safetensors",
        licence="Apache-2.0",
        description="weights inside the package",
        package_file="models/weights/shipped_test.safetensors",
    )
    expected = Path(napari_vfmseg.__file__).parent / "models" / "weights" / "shipped_test.safetensors"
    assert spec.local_path() == expected
    assert not spec.is_present()
    with pytest.raises(FileNotFoundError, match="reinstall napari-vfmseg"):
        ensure_weights(spec)


def test_registered_custom_model_loads_through_the_registry(home):
    """The extension point: a spec with its own builder and weights file loads by name."""
    from safetensors.torch import save_file

    source = build_tiny_sam(seed=3)
    staging = home / "staging.safetensors"
    staging.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(staging))
    payload = staging.read_bytes()
    spec = ModelSpec(
        name="custom_tiny",
        arch="builtin",
        builder=lambda: build_tiny_sam(seed=99),
        image_size=128,
        filename="custom_tiny.safetensors",
        licence="Apache-2.0",
        description="tiny test model",
        url=UNREACHABLE,
        sha256=hashlib.sha256(payload).hexdigest(),
        size_bytes=len(payload),
    )
    register_model(spec)
    try:
        assert "custom_tiny" in model_names()
        record = {r["name"]: r for r in list_models()}["custom_tiny"]
        assert record["present"] is False
        spec.local_path().parent.mkdir(parents=True, exist_ok=True)
        spec.local_path().write_bytes(payload)
        assert {r["name"]: r for r in list_models()}["custom_tiny"]["present"] is True
        model = load_model("custom_tiny", device="cpu", download=False)
        assert model.name == "custom_tiny" and model.arch == "builtin"
        assert model.image_size == 128
        for key, value in source.state_dict().items():
            assert torch.equal(model.sam.state_dict()[key], value), key
    finally:
        unregister_model("custom_tiny")
    assert "custom_tiny" not in model_names()


def test_infer_arch_tells_the_sam_encoders_apart():
    for arch in ("vit_b", "vit_l", "vit_h", "vit_t"):
        with torch.device("meta"):  # shapes only: no memory, no random init
            state = ARCHITECTURES[arch].builder().state_dict()
        assert infer_arch(state) == arch


def test_infer_arch_rejects_unknown_layouts():
    tiny = build_tiny_sam().state_dict()
    with pytest.raises(ValueError, match=r"width 64 and 2 blocks.*arch="):
        infer_arch(tiny, source="tiny.pth")
    with pytest.raises(ValueError, match="resnet.pth is not a SAM-format checkpoint.*conv1.weight"):
        infer_arch({"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}, source="resnet.pth")


def test_cli_models_json_parses(home, capsys):
    assert main(["models", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in records] == model_names()
    assert all(r["present"] is (r["name"] == "builtin") for r in records)
    assert {r["name"]: r["sha256"] for r in records}["vit_h"] == get_spec("vit_h").sha256


def test_cli_models_table_and_bad_name(home, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["NAME", "ARCH", "SIZE", "PRESENT"]
    for name in OFFICIAL:
        assert re.search(rf"^{name}\s", out, re.MULTILINE)
    assert str(home.resolve() / "weights") in out
    assert main(["models", "--download", "vit_q"]) == 2
    assert "unknown model 'vit_q'" in capsys.readouterr().err
