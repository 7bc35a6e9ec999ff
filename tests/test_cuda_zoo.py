"""Every zoo kernel, LeNet included, gets a valid CUDA schedule for sm_90: the static config
and random configs apply and compile, and every kernel stays within the card's threads and
shared memory per block, bound to blockIdx/threadIdx (no host fallback)."""

from __future__ import annotations

import os
import random

import pytest

from autosched import zoo
from autosched.gpu_hardware import detect_gpu_hardware
from autosched.schedule import apply_config, build_template, static_config
from tests.cuda_support import (
    COMPLEX_REDUCTION_KERNELS,
    OTHER_TEMPLATE_KERNELS,
    assert_valid_cuda,
    compile_cuda,
)

RANDOM_CONFIGS = 20
#: LeNet's nine stages take ~3 s a config: the suite builds 6 of them; the issue's 20 (or
#: more) with AUTOSCHED_TEST_RANDOM_CONFIGS=20 when the CUDA templates change.
LENET_RANDOM_CONFIGS = int(os.environ.get("AUTOSCHED_TEST_RANDOM_CONFIGS", "6"))
#: Swept with as many random configs by the template's own tests
#: (test_cuda_complex_reduction.py, test_cuda_templates.py): not built twice.
SWEPT_ELSEWHERE = {*COMPLEX_REDUCTION_KERNELS, *OTHER_TEMPLATE_KERNELS}


@pytest.fixture(scope="module")
def hw():
    return detect_gpu_hardware(tag="nvidia/nvidia-h100")


@pytest.mark.parametrize("name", zoo.names())
def test_static_config_compiles_for_sm90(name, hw) -> None:
    func = zoo.prim_func(name)
    template = build_template(func, hw)
    config = template.validate(static_config(func, hw))
    _, src = compile_cuda(apply_config(func, config, hw, template=template), hw)
    assert_valid_cuda(src, hw)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in zoo.names() if n not in SWEPT_ELSEWHERE])
def test_random_configs_compile_for_sm90(name, hw) -> None:
    func = zoo.prim_func(name)
    template = build_template(func, hw)
    rng = random.Random(f"cuda-{name}")
    for _ in range(LENET_RANDOM_CONFIGS if name == "lenet" else RANDOM_CONFIGS):
        config = template.sample(rng)
        _, src = compile_cuda(apply_config(func, config, hw, template=template), hw)
        assert_valid_cuda(src, hw)
