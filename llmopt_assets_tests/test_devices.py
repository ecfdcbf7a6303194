"""Device choice, pools and the memory budget: decided before any weights are read."""

import logging

import pytest
import torch

from llmopt_assets.defs.resources import CELERY_QUEUE_TAG, ComputeResource, device_step
from llmopt_assets.measure.devices import (
    LOAD_OVERHEAD,
    MemoryBudgetError,
    check_memory_budget,
    choose_device,
    estimate_load_bytes,
    pool_for,
    pool_limits,
)


@pytest.mark.parametrize(
    "requested,cuda_devices,device,falls_back",
    [
        ("auto", 0, "cpu", False),
        ("auto", 2, "cuda", False),
        ("cpu", 2, "cpu", False),
        ("cuda", 1, "cuda", False),
        ("cuda:1", 2, "cuda:1", False),
        ("cuda", 0, "cpu", True),
        ("cuda:3", 0, "cpu", True),
    ],
)
def test_device_choice(requested: str, cuda_devices: int, device: str, falls_back: bool) -> None:
    choice = choose_device(requested, cuda_devices)
    assert choice.device == device
    assert (choice.fallback is not None) == falls_back
    if falls_back:
        assert requested in choice.fallback and "running on the CPU" in choice.fallback


@pytest.mark.parametrize("requested,message", [("cuda:2", "only 2 CUDA"), ("tpu", "must be 'auto'")])
def test_impossible_device_is_refused(requested: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        choose_device(requested, 2)


def test_pools_follow_the_devices_that_exist() -> None:
    assert pool_limits(0) == {"cpu": 1, "gpu": 1}
    assert pool_limits(4) == {"cpu": 1, "gpu": 4}
    # Without CUDA a GPU step runs on the CPU, so it queues behind the CPU steps.
    assert pool_for("gpu", 0) == "cpu"
    assert pool_for("gpu", 1) == "gpu"
    assert pool_for("cpu", 8) == "cpu"
    step = device_step("gpu")
    assert step["op_tags"] == {CELERY_QUEUE_TAG: "gpu"}
    assert step["pool"] == ("gpu" if torch.cuda.device_count() else "cpu")


def test_memory_estimate_by_hand() -> None:
    # SmolLM2-135M: 134,515,008 parameters × 4 bytes × 1.25 = 672,575,040 bytes in fp32.
    assert LOAD_OVERHEAD == 1.25
    assert estimate_load_bytes(134_515_008, "float32") == 672_575_040
    assert estimate_load_bytes(134_515_008, "bfloat16") == 336_287_520
    with pytest.raises(ValueError, match="dtype must be one of"):
        estimate_load_bytes(10, "int3")
    with pytest.raises(ValueError, match="positive"):
        estimate_load_bytes(0, "float32")


def test_memory_budget_refuses_a_model_that_does_not_fit() -> None:
    assert check_memory_budget(1000, "float32", 5000, "m|base") == 5000
    with pytest.raises(MemoryBudgetError, match=r"m\|int8: 1,000 parameters in float32 need .* budget is"):
        check_memory_budget(1000, "float32", 4999, "m|int8")


def test_gpu_resource_on_a_cuda_less_machine_says_so_once(monkeypatch, caplog) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    log = logging.getLogger("test_devices")
    with caplog.at_level(logging.WARNING, logger="test_devices"):
        device = ComputeResource(device="cuda", memory_budget_gb=1.0).prepare(log, 1000, "m|base")
    assert device == "cpu"
    assert [r.getMessage() for r in caplog.records] == [
        "m|base: cuda requested but this machine has no CUDA device: running on the CPU"
    ]


def test_resource_budget_defaults_to_free_memory(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    resource = ComputeResource(device="cpu")
    assert resource.budget_bytes("cpu") > 0
    with pytest.raises(MemoryBudgetError):
        # 10^15 parameters fit no machine this test runs on.
        resource.prepare(logging.getLogger("test_devices"), 10**15, "huge|base")
