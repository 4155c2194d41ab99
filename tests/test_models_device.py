"""Device choice, encoder precision and CPU threads."""

from __future__ import annotations

import os

import pytest
import torch

from napari_vfmseg.models import device as device_module
from napari_vfmseg.models import configure_cpu_threads, encoder_dtype_for, physical_cpu_count, resolve_device


@pytest.fixture
def machine(monkeypatch):
    """Pretend accelerators: set ``machine(cuda=..., mps=...)`` before calling resolve_device."""

    def set_machine(cuda: bool = False, mps: bool = False, cuda_count: int = 1):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_count if cuda else 0)
        monkeypatch.setattr(device_module, "_mps_available", lambda: mps)

    return set_machine


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_auto_prefers_cuda_then_mps_then_cpu(machine):
    machine(cuda=True, mps=True)
    assert resolve_device("auto") == torch.device("cuda")
    machine(cuda=False, mps=True)
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_device(None) == torch.device("mps")
    machine(cuda=False, mps=False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" AUTO ") == torch.device("cpu")


def test_auto_on_this_machine():
    """CPU on the project's machines (no accelerator); CUDA on a GPU machine."""
    if torch.cuda.is_available():
        expected = "cuda"
    elif device_module._mps_available():
        expected = "mps"
    else:
        expected = "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"


def test_explicit_devices(machine):
    machine(cuda=True, cuda_count=2)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="has 2 CUDA device"):
        resolve_device("cuda:2")


def test_unknown_or_unavailable_devices_raise(machine):
    machine(cuda=False, mps=False)
    with pytest.raises(ValueError, match=r"unknown device 'gpu'.*'auto', 'cpu', 'cuda'"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="unsupported device 'xla'"):
        resolve_device("xla")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="MPS is not available"):
        resolve_device("mps")


def test_encoder_dtype_follows_the_device(monkeypatch):
    assert encoder_dtype_for(torch.device("cpu")) is None
    assert encoder_dtype_for(torch.device("mps")) is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # H100
    assert encoder_dtype_for(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # T4
    assert encoder_dtype_for(torch.device("cuda", 0)) == torch.float16


def test_cpu_threads_follow_physical_cores(monkeypatch, restore_threads):
    import psutil

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 1 if not logical else 2)
    assert physical_cpu_count() == 1
    assert configure_cpu_threads() == 1
    assert torch.get_num_threads() == 1

    # psutil cannot tell (returns None): fall back to os.cpu_count()
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: None)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert configure_cpu_threads() == 3
    assert torch.get_num_threads() == 3


def test_explicit_omp_num_threads_is_respected(monkeypatch, restore_threads):
    import psutil

    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 1)
    assert configure_cpu_threads() == 2
    assert torch.get_num_threads() == 2


def test_load_model_configures_threads_on_cpu_only(monkeypatch, tmp_path, restore_threads):
    from napari_vfmseg.models import loading
    from napari_vfmseg.models.tiny_vit import build_sam_vit_t

    calls = []
    monkeypatch.setattr(loading, "configure_cpu_threads", lambda: calls.append(1) or 7)
    path = tmp_path / "mobile_sam.pt"
    torch.save(build_sam_vit_t().state_dict(), path)
    model = loading.load_model(path, device="cpu")
    assert calls == [1]
    assert model.info["cpu_threads"] == 7
    assert model.encoder_dtype is None
    assert all(p.device.type == "cpu" for p in model.sam.parameters())
