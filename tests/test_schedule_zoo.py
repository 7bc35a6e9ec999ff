"""Every zoo kernel: the static config and random configs compile and match the reference."""

import os
import random

import pytest
import tvm

from autosched import zoo
from autosched.analysis import analyze
from autosched.hardware import detect_hardware
from autosched.schedule import apply_config, build_template, static_config
from autosched.space import Config, Template
from tests.kernels import assert_matches_reference

# Per kernel. The suite samples 6 (compiling is most of its time); run this file alone with
# more, e.g. AUTOSCHED_TEST_RANDOM_CONFIGS=100, after changing a meta-template.
RANDOM_CONFIGS = int(os.environ.get("AUTOSCHED_TEST_RANDOM_CONFIGS", "6"))


@pytest.fixture(scope="module")
def hw():
    return detect_hardware()


@pytest.mark.parametrize("name", zoo.names())
def test_static_config_is_valid_and_correct(name, hw):
    func = zoo.prim_func(name)
    template = build_template(func, hw)
    config = static_config(func, hw)
    template.validate(config)
    sch = apply_config(func, config, hw, template)
    assert_matches_reference(sch.mod, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.names())
def test_random_configs_are_correct(name, hw):
    func = zoo.prim_func(name)
    stages = analyze(func)
    template = build_template(func, hw, stages)
    rng = random.Random(f"random-configs-{name}")
    for _ in range(RANDOM_CONFIGS):
        config = template.sample(rng)
        template.validate(config)
        sch = apply_config(func, config, hw, template, stages)
        assert_matches_reference(sch.mod, name)


def test_template_and_config_round_trip_through_json(hw):
    import json

    func = zoo.prim_func("conv2d_bias_relu")
    template = build_template(func, hw)
    again = Template.from_json(json.loads(json.dumps(template.to_json())))
    assert again == template
    config = static_config(func, hw)
    assert Config.from_json(json.loads(json.dumps(config.to_json()))) == config


def test_applying_a_config_is_deterministic(hw):
    func = zoo.prim_func("lenet")
    config = static_config(func, hw)
    first = apply_config(func, config, hw).mod
    second = apply_config(func, config, hw).mod
    tvm.ir.assert_structural_equal(first, second)


def test_tile_values_fit_awkward_extents(hw):
    """257 is prime: tiles are its divisors or guarded (non-dividing) splits that cover it."""
    template = build_template(zoo.prim_func("matmul_awkward"), hw)
    knob = template.stage("C").knob("tile_s0")
    rng = random.Random(0)
    for _ in range(200):
        value = knob.sample(rng)
        knob.validate(value)
        assert value[0] * value[1] * value[2] * value[3] >= 257


@pytest.mark.parametrize(
    "name", ["matmul_awkward", "dense_bias_relu", "conv2d_resnet_c2", "conv2d_bias_relu", "lenet"]
)
def test_many_random_configs_apply(name, hw):
    """Guarded tiles with write caches, epilogues and decomposed inits were once refused by
    TVM; every config in the domains must now apply (compiling them is the test above)."""
    func = zoo.prim_func(name)
    stages = analyze(func)
    template = build_template(func, hw, stages)
    rng = random.Random(f"apply-{name}")
    for _ in range(3 * RANDOM_CONFIGS):
        apply_config(func, template.sample(rng), hw, template, stages)
