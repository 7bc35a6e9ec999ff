"""The classification of every zoo kernel's stages is pinned."""

import pytest

from autosched import zoo
from autosched.analysis import analyze

D, S, C, L = "direct_compute", "simple_reduction", "complex_reduction", "location_tunable"

EXPECTED = {
    "matmul_512": {"C": ("SSR", C)},
    "matmul_1024": {"C": ("SSR", C)},
    "matmul_awkward": {"C": ("SSR", C)},
    "matmul_prime": {"C": ("SSR", C)},
    # x is reused along every row: a complex reduction, however memory-bound
    "matvec": {"y": ("SR", C)},
    "mlp": {
        "T_matmul_NT": ("SSR", C),
        "compute": ("S", D),
        "T_add": ("SS", D),
        "compute_1": ("SS", L),
        "T_matmul_NT_1": ("SSR", C),
        "compute_2": ("S", D),
        "T_add_1": ("SS", D),
    },
    "dense_bias_relu": {"T_matmul_NT": ("SSR", C), "T_add": ("SS", D), "compute": ("SS", D)},
    "batch_matmul": {"T_batch_matmul_NT": ("SSSR", C)},
    "conv2d_resnet_c2": {"pad_temp": ("SSSS", L), "conv2d_nchw": ("SSSSRRR", C)},
    "conv2d_resnet_c3": {"pad_temp": ("SSSS", L), "conv2d_nchw": ("SSSSRRR", C)},
    "conv2d_resnet_c4_s2": {"pad_temp": ("SSSS", L), "conv2d_nchw": ("SSSSRRR", C)},
    "conv2d_resnet_1x1": {"pad_temp": ("SSSS", L), "conv2d_nchw": ("SSSSRRR", C)},
    "conv2d_bias_relu": {
        "pad_temp": ("SSSS", L),
        "conv2d_nchw": ("SSSSRRR", C),
        "T_add": ("SSSS", D),
        "compute": ("SSSS", D),
    },
    "conv2d_s2_bias_relu": {
        "pad_temp": ("SSSS", L),
        "conv2d_nchw": ("SSSSRRR", C),
        "T_add": ("SSSS", D),
        "compute": ("SSSS", D),
    },
    "depthwise_conv2d": {"PaddedInput": ("SSSS", L), "DepthwiseConv2d": ("SSSSRR", C)},
    "max_pool": {"pad_temp": ("SSSS", L), "pool_max": ("SSSSRR", S)},
    "softmax": {
        "T_softmax_maxelem": ("SR", S),
        "T_softmax_exp": ("SS", L),
        "T_softmax_expsum": ("SR", S),
        "T_softmax_norm": ("SS", D),
    },
    "layer_norm": {
        "X_sum": ("SR", S),
        "X_mean": ("S", L),
        "X_var_sum": ("SR", S),
        "T_layer_norm": ("SS", D),
    },
    "layer_norm_odd": {
        "X_sum": ("SR", S),
        "X_mean": ("S", L),
        "X_var_sum": ("SR", S),
        "T_layer_norm": ("SS", D),
    },
    "gelu": {"gelu": ("SS", D)},
    "row_sum": {"row_sum": ("SR", S)},
    "elementwise_chain": {"scale_add": ("SS", D), "expm1": ("SS", D), "relu": ("SS", D)},
    "transpose": {"T_transpose": ("SS", D)},
    "transpose_awkward": {"T_transpose": ("SS", D)},
    "permute_nhwc": {"T_transpose": ("SSSS", D)},
    "lenet": {
        "pad_temp": ("SSSS", L),
        "conv2d_nchw": ("SSSSRRR", C),
        "T_add": ("SSSS", D),
        "compute": ("SSSS", L),
        "pool_max": ("SSSSRR", S),
        "pad_temp_1": ("SSSS", L),
        "conv2d_nchw_1": ("SSSSRRR", C),
        "T_add_1": ("SSSS", D),
        "compute_1": ("SSSS", L),
        "pool_max_1": ("SSSSRR", S),
        "T_reshape": ("SS", L),
        "T_matmul_NT": ("SSR", C),
        "compute_2": ("S", D),
        "T_add_2": ("SS", D),
        "compute_3": ("SS", L),
        "T_matmul_NT_1": ("SSR", C),
        "compute_4": ("S", D),
        "T_add_3": ("SS", L),
        "T_softmax_maxelem": ("SR", S),
        "T_softmax_exp": ("SS", L),
        "T_softmax_expsum": ("SR", S),
        "T_softmax_norm": ("SS", D),
    },
}


def test_every_zoo_kernel_is_pinned():
    assert set(EXPECTED) == set(zoo.names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_classification(name):
    got = {s.name: (s.iter_kinds, str(s.meta_template)) for s in analyze(zoo.prim_func(name))}
    assert got == EXPECTED[name]


def test_producers_consumers_and_reasons():
    stages = {s.name: s for s in analyze(zoo.prim_func("conv2d_bias_relu"))}
    assert stages["pad_temp"].consumers == ("conv2d_nchw",)
    assert stages["pad_temp"].has_conditional
    assert stages["conv2d_nchw"].producers == ("pad_temp",)
    assert stages["conv2d_nchw"].consumers == ("T_add",)
    assert stages["compute"].is_output and not stages["T_add"].is_output
    assert "reused along spatial axes" in stages["conv2d_nchw"].reason
    assert "padding" in stages["pad_temp"].reason


def test_reshape_is_flagged_for_index_arithmetic():
    stages = {s.name: s for s in analyze(zoo.prim_func("lenet"))}
    assert stages["T_reshape"].has_index_arith
    assert not stages["T_matmul_NT"].has_index_arith


def test_classification_ignores_names():
    """Same DAG, other names: same templates (rules look at structure, never names)."""
    from tvm import te

    a = te.placeholder((64, 32), name="foo")
    b = te.placeholder((32, 48), name="bar")
    k = te.reduce_axis((0, 32), name="zz")
    c = te.compute((64, 48), lambda x, y: te.sum(a[x, k] * b[k, y], axis=k), name="whatever")
    d = te.compute((64, 48), lambda x, y: c[x, y] * 2.0, name="scaled")
    stages = analyze(te.create_prim_func([a, b, d]))
    assert [str(s.meta_template) for s in stages] == [C, D]
