"""Vector lanes off the innermost axis (NCHWc-style convs) and producers computed at a tiled
reduction's outermost reduction loop."""

import pytest
import tvm
from tvm import te, topi

from autosched import zoo
from autosched.analysis import analyze
from autosched.schedule import apply_config, build_template, static_config
from autosched.space import Config
from autosched.templates.vector_axis import static_vector_axis, vector_axis_options
from tests.kernels import assert_matches_reference
from tests.search_support import HW


def _stage(name: str, kind: str = "complex_reduction"):
    return next(s for s in analyze(zoo.prim_func(name)) if s.meta_template == kind)


def test_a_convs_output_channels_can_carry_the_lanes_but_not_its_strided_rows():
    conv = _stage("conv2d_resnet_c4_s2")  # n, oc, oh, ow, ic, kh, kw
    assert vector_axis_options(conv) == (3, 1)
    # 14-wide rows leave lanes empty on 8 lanes; 256 channels fill them.
    assert static_vector_axis(conv, 8) == 1
    matmul = _stage("matmul_512")
    assert vector_axis_options(matmul) == (1, 0)
    assert static_vector_axis(matmul, 8) == 1  # 512 columns fill whole vectors already
    # Every depthwise operand indexes the channel: no operand is broadcast along it.
    assert vector_axis_options(_stage("depthwise_conv2d")) == (3,)


@pytest.mark.parametrize("name", ["conv2d_s2_bias_relu", "conv2d_resnet_1x1"])
def test_lanes_on_output_channels_keep_an_accumulator_with_lanes_innermost(name):
    func = zoo.prim_func(name)
    config = static_config(func, HW)
    conv = _stage(name).name
    assert config.values[conv]["vector_axis"] == 1
    sch = apply_config(func, config, HW)
    script = sch.mod.script()
    # The accumulator (a write cache or the fused epilogue's input) is blocked by 8 lanes,
    # and the vectorized loop is the channel's.
    assert "T.vectorized(8)" in script
    assert any(
        str(buf.shape[-1]) == "8" and len(buf.shape) == 5
        for buf in _allocated(sch)
        if buf.name.startswith("conv2d_nchw")
    )
    assert_matches_reference(sch.mod, name)


def _allocated(sch):
    found = []
    root = sch.get(sch.get_sblock("root"))
    found += list(root.alloc_buffers)
    return found


def test_padding_computed_at_the_reduction_loop_is_vectorized_and_correct():
    name = "conv2d_s2_bias_relu"
    func = zoo.prim_func(name)
    template = build_template(func, HW)
    pad_space = next(s for s in template.stages if s.stage == "pad_temp")
    location = next(k for k in pad_space.knobs if k.name == "location")
    assert "consumer_reduction" in location.choices
    values = {k: dict(v) for k, v in static_config(func, HW).values.items()}
    values["pad_temp"].update(location="consumer_reduction", vector=2)
    config = Config(values)
    template.validate(config)
    sch = apply_config(func, config, HW, template)
    pad_loops = sch.get_loops(sch.get_sblock("pad_temp"))
    conv_loops = sch.get_loops(sch.get_sblock("conv2d_nchw_update"))
    # pad_temp sits under the conv's parallel and tile loops and its first reduction loop
    assert len(pad_loops) > 3 and sch.get(pad_loops[0]).same_as(sch.get(conv_loops[0]))
    assert sch.get(pad_loops[-1]).kind == tvm.tirx.ForKind.VECTORIZED
    assert_matches_reference(sch.mod, name)


def test_a_reduction_without_tiling_leaves_its_producer_at_root():
    """A consumer_reduction placement needs the consumer's r0 loop: a matvec-like stage
    scheduled by reduce_lanes has none, and the producer stays at root (valid config)."""
    a = te.placeholder((64, 96), "float32", name="A")
    x = te.placeholder((96,), "float32", name="x")
    xr = topi.nn.relu(x)
    k = te.reduce_axis((0, 96), name="k")
    y = te.compute((64,), lambda i: te.sum(a[i, k] * xr[k], axis=k), name="y")
    func = te.create_prim_func([a, x, y])
    template = build_template(func, HW)
    config = static_config(func, HW)
    producer = next(s.stage for s in template.stages if s.stage != "y")
    values = {s: dict(v) for s, v in config.values.items()}
    knobs = {k.name: k for k in next(s for s in template.stages if s.stage == producer).knobs}
    if "location" not in knobs or "consumer_reduction" not in knobs["location"].choices:
        pytest.skip("the producer is inlined by the analysis' rules here")
    values[producer]["location"] = "consumer_reduction"
    sch = apply_config(func, Config(values), HW, template)
    assert sch is not None
