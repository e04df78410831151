"""The memory plan: numbers, the budget refusal, the trainer's own limit."""
from __future__ import annotations

import subprocess
import sys

import pytest

from services.common.errors import MemoryBudgetExceeded
from services.trainer.config import parse_config
from services.trainer.memory import (
    ARCHITECTURES, GIB, Architecture, as_out_of_memory, check_memory, memory_limiter,
    miner_bytes, plan_memory, triplet_count,
)


def test_architecture_numbers_match_the_model_table():
    from services.trainer.model import BACKBONES

    assert {n: Architecture.from_arch(b.arch) for n, b in BACKBONES.items()} == ARCHITECTURES


def test_parameter_counts_match_the_published_sizes():
    def millions(name):
        return ARCHITECTURES[name].parameters(224) / 1e6

    assert 21 < millions("dinov2-small") < 23 and 85 < millions("dinov2-base") < 88
    assert 300 < millions("dinov2-large") < 306


def test_plan_grows_with_batch_and_image_and_amp_halves_activations():
    base = parse_config({})
    bigger = parse_config({"sampler": {"p": 16, "k": 4}, "training": {"batch_size": 64}})
    arch = ARCHITECTURES["dinov2-base"]
    cpu, cuda = plan_memory(base, arch, device="cpu"), plan_memory(base, arch, device="cuda")
    assert plan_memory(bigger, arch).activations == 2 * cpu.activations
    assert cuda.activations * 2 == cpu.activations  # amp 'auto' is fp16 on CUDA only
    assert cpu.weights_and_optimizer == 16 * cpu.parameters
    assert 5 * GIB < cpu.total < 12 * GIB  # default config, fp32 on CPU


def test_triplet_miner_costs():
    assert triplet_count(8, 4) == 8 * 4 * 3 * 7 * 4
    assert miner_bytes("semihard", 2000, 2, 1000) > 100 * GIB  # the 24 GB OOM of issue 8
    assert miner_bytes("batch_hard", 2000, 2, 1000) == 64_000_000
    assert miner_bytes("unknown", 2000, 2, 1000) == 0


def test_p2_k1000_batch_2000_is_refused_with_numbers():
    config = parse_config({"sampler": {"p": 2, "k": 1000}, "training": {"batch_size": 2000},
                           "loss": {"miner": "batch_hard"}})
    with pytest.raises(MemoryBudgetExceeded) as info:
        check_memory(config, 16 * GIB, "the worker's budget (cpu)")
    message = info.value.message
    assert "needs about 378.56 GiB" in message and "activations 370.86 GiB" in message
    assert "the worker's budget (cpu) has 16.00 GiB" in message and "training.batch_size" in message
    assert info.value.code == "memory_budget_exceeded"
    assert info.value.details["budget_bytes"] == 16 * GIB


def test_demo_sized_config_fits_a_small_budget():
    config = parse_config({"model": "tiny-dinov2", "training": {"image_size": 64}})
    assert check_memory(config, 2 * GIB, "w").total < 1 * GIB


@pytest.mark.parametrize("exc, expected", [
    (MemoryError(), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes"), True),
    (type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory"), True),
    (RuntimeError("shape mismatch"), False),
    (ValueError("x"), False),
])
def test_out_of_memory_is_recognised(exc, expected):
    oom = as_out_of_memory(exc)
    assert (oom is not None) == expected
    if oom is not None:
        assert oom.code == "out_of_memory" and "training.batch_size" in oom.message


def test_a_process_over_its_limit_fails_alone_with_out_of_memory():
    """The local launcher's preexec_fn: the child's torch allocation fails, the parent is fine."""
    child = (
        "import torch\n"
        "from services.trainer.memory import as_out_of_memory\n"
        "try:\n"
        "    torch.ones(2 * 1024**3, dtype=torch.uint8)\n"
        "except Exception as exc:\n"
        "    print(as_out_of_memory(exc).code)\n"
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                         timeout=120, preexec_fn=memory_limiter(1 * GIB))
    assert out.stdout.strip() == "out_of_memory", out.stderr[-2000:]
    assert memory_limiter(None) is None
