"""bench/explain_ms.py's parts: the trace interpreter (bench/ms_trace.py), the gap list against
autosched's templates (bench/ms_gaps.py) and the tuning-curve end points
(bench/tuning_curve.py). The traces come from small hand-written s_tir schedules in the
shape MetaSchedule's CPU rules produce (no MetaSchedule tuning here: too slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tvm import s_tir, te, topi

from autosched.hardware import HardwareParams
from autosched.schedule import build_template
from bench.ms_gaps import describe, find_gaps, level_order
from bench.ms_trace import interpret
from bench.tuning_curve import end_points, ms_latencies, wall_at

HW = HardwareParams(2, 256, 32768, 524288, 8388608, "haswell")


def _matmul_relu(m: int = 64, n: int = 48, k: int = 32):
    a = te.placeholder((m, k), name="A")
    b = te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    d = te.compute((m, n), lambda i, j: te.max(c[i, j], 0.0), name="D")
    return te.create_prim_func([a, b, d])


def _ssrsrs(sch: s_tir.Schedule, k_levels: int = 2):
    """MultiLevelTiling's SSRSRS on block C: i, j in four levels (i's sampled), k in
    ``k_levels``; returns the split loops."""
    block = sch.get_sblock("C")
    i, j, k = sch.get_loops(block)
    i0, i1, i2, i3 = sch.split(i, factors=sch.sample_perfect_tile(i, n=4, decision=[2, 4, 2, 4]))
    j0, j1, j2, j3 = sch.split(j, factors=[None, 2, 3, 8])
    ks = sch.split(k, factors=[None, 4] if k_levels == 2 else [None, 2, 2])
    sch.reorder(i0, j0, i1, j1, ks[0], i2, j2, *ks[1:], i3, j3)
    return block, (i0, i1, i2, i3), (j0, j1, j2, j3), ks


def _postproc_like(sch: s_tir.Schedule) -> None:
    """What RewriteParallelVectorizeUnroll does, found through GetChildBlocks (a block list
    the interpreter has to read from a replay)."""
    root = sch.get_sblock("root")
    sch.annotate(
        root,
        "meta_schedule.unroll_explicit",
        sch.sample_categorical([0, 16, 64, 512], [0.25] * 4, decision=2),
    )
    for child in sch.get_child_blocks(root):
        if sch.get(child).name_hint == "C":
            loops = sch.get_loops(child)
            fused = sch.fuse(loops[0], loops[1])
            sch.parallel(fused)
            sch.vectorize(loops[-1])
            sch.annotate(fused, "pragma_auto_unroll_max_step", 64)


def test_interpret_tiling_cache_write_parallel_vectorize():
    func = _matmul_relu()
    sch = s_tir.Schedule(func)
    block, _, (_, j1, _, _), _ = _ssrsrs(sch)
    cw = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(cw, j1)
    di, dj = sch.get_loops(sch.get_sblock("D"))
    sch.parallel(di)
    sch.vectorize(sch.split(dj, factors=[None, 8])[1])  # the last axis alone: a vector knob
    _postproc_like(sch)

    model = interpret(func, sch.trace)
    assert model.tilings["C", "v_i"] == [2, 4, 2, 4]  # from the sampling decision
    assert model.tilings["C", "v_j"] == [1, 2, 3, 8]  # None resolved from the extent
    assert model.tilings["C", "v_k"] == [8, 4]
    c = model.blocks["C"]
    assert level_order(c) == "s0 s1 r0 s2 r1 s3"
    assert [lp.label for lp in c.loops][:2] == ["v_i.0*v_j.0", "v_i.1"]
    assert c.loops[0].binding == "parallel" and c.loops[0].extent == 2
    assert c.loops[-1].label == "v_j.3" and c.loops[-1].binding == "vectorized"
    assert c.loops[0].annotations["pragma_auto_unroll_max_step"] == 64
    assert model.root_hints["meta_schedule.unroll_explicit"] == 64
    cache = model.blocks["C_global"]
    assert cache.origin == "cache_write" and cache.location == "at C v_j.1"
    # Its own loops cover one s1 tile: i2*i3 x j2*j3 (read from the scheduled function).
    assert [lp.extent for lp in cache.loops[-2:]] == [8, 24]
    views = {v.name: v for v in describe(model)}
    assert views["C"].role == "tiled" and views["C_global"].role == "cache_write"
    assert views["D"].role == "root"
    # All of it is an autosched config: four spatial / two reduction levels, write cache
    # at the last s1 loop, s0 fused and parallel, the last axis' s3 vectorized.
    assert find_gaps(model, build_template(func, HW)) == []


def test_gaps_flag_what_autosched_lacks():
    func = _matmul_relu()
    sch = s_tir.Schedule(func)
    block, (_, _, i2, _), (j0, _, _, _), ks = _ssrsrs(sch, k_levels=3)
    sch.parallel(j0)  # i0 (extent 2) stays serial outside: not all of s0 is parallel
    cr = sch.cache_read(block, 0, "global")  # A, computed per reduction tile
    sch.compute_at(cr, ks[0])
    cw = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(cw, i2)  # a register-level write-back
    fused = sch.fuse(*sch.get_loops(sch.get_sblock("D")))
    sch.vectorize(sch.split(fused, factors=[None, 64])[1])  # a vector across rows
    model = interpret(func, sch.trace)
    assert model.blocks["A_global"].location == "at C v_k.0"
    features = {g.feature: g for g in find_gaps(model, build_template(func, HW))}
    assert "tiling_levels" in features and "v_k" in features["tiling_levels"].detail
    assert "cache_read" in features and "A" in features["cache_read"].detail
    assert "write_cache" in features
    assert "v_j.0" in features["parallel"].detail
    assert features["vectorize"].block == "D" and "(v_i*v_j).1" in features["vectorize"].detail
    assert "loop_order" in features  # r2 makes a level sequence autosched has not
    # ... and not what it has: the four-level spatial tiles are fine.
    assert not [g for g in features.values() if g.feature == "tile_factor"]


def test_sampled_compute_location_of_padding():
    data = te.placeholder((1, 8, 10, 10), name="data")
    kernel = te.placeholder((16, 8, 3, 3), name="kernel")
    func = te.create_prim_func([data, kernel, topi.nn.conv2d_nchw(data, kernel, 1, 1, 1)])
    sch = s_tir.Schedule(func)
    conv = sch.get_sblock("conv2d_nchw")
    loops = sch.get_loops(conv)
    # nn (1), ff (16), yy (10), xx (10); rc, ry, rx. TVM skips unit loops as locations.
    factors = [[None, 1, 1, 1], [None, 2, 2, 2], [None, 5, 1, 2], [None, 2, 1, 5]]
    splits = [
        sch.split(lp, factors=factors[n] if n < 4 else [None, 1]) for n, lp in enumerate(loops)
    ]
    spatial, reduction = splits[:4], splits[4:]
    sch.reorder(
        *[s[0] for s in spatial],
        *[s[1] for s in spatial],
        *[r[0] for r in reduction],
        *[s[2] for s in spatial],
        *[r[1] for r in reduction],
        *[s[3] for s in spatial],
    )
    pad = sch.get_sblock("pad_temp")
    # Loop #7 of the consumer: the last s1 loop (xx.1), autosched's consumer_tile.
    sch.compute_at(pad, sch.sample_compute_location(pad, decision=7))
    model = interpret(func, sch.trace)
    assert model.blocks["pad_temp"].location == "at conv2d_nchw v_xx.1"
    gaps = find_gaps(model, build_template(func, HW))
    assert not [g for g in gaps if g.block == "pad_temp"]

    deeper = s_tir.Schedule(func)
    conv = deeper.get_sblock("conv2d_nchw")
    rc0, _ = deeper.split(deeper.get_loops(conv)[4], factors=[None, 2])
    pad = deeper.get_sblock("pad_temp")
    deeper.compute_at(pad, rc0)  # inside the reduction: no autosched location
    gaps = find_gaps(interpret(func, deeper.trace), build_template(func, HW))
    assert [g.feature for g in gaps if g.block == "pad_temp"] == ["compute_at"]


def test_curve_end_points():
    lat = [None, 5.0, 3.0, None, 4.0, 1.0]
    assert end_points(lat, 6, points=(2, 4, 8)) == {2: 5.0, 4: 3.0, 6: 1.0}
    assert end_points([None, None], 2, points=(1,)) == {1: None, 2: None}
    # Fewer trials than the budget (the tuner ran out of candidates): the last best.
    assert end_points([2.0, 1.5], 64) == {64: 1.5}
    assert end_points(lat, 1000)[1000] == 1.0 and set(end_points(lat, 1000)) == {
        64,
        128,
        256,
        512,
        1000,
    }


def test_ms_latencies_in_commit_order(tmp_path: Path):
    records = [
        [0, [[], [0.004, 0.002], {}, []]],
        [0, [[], [1e10], {}, []]],
        [0, [[], [0.001], {}, []]],
    ]
    (tmp_path / "database_tuning_record.json").write_text("\n".join(json.dumps(r) for r in records))
    assert ms_latencies(tmp_path) == [pytest.approx(0.003), None, 0.001]
    assert ms_latencies(tmp_path / "missing") == []


def test_curve_wall_times_at_batch_ends():
    marks = [(32, 10.0), (64, 25.0), (96, 40.0), (100, 41.0)]
    assert wall_at(marks, 100, points=(64, 80)) == {64: 25.0, 80: 40.0, 100: 41.0}
    assert wall_at(marks[:2], 128, points=(64,)) == {64: 25.0, 128: 25.0}  # stopped short
    assert wall_at([], 64) == {64: None}


def test_pad_einsum_pads_to_multiples():
    func = _matmul_relu(m=61, n=45, k=32)
    sch = s_tir.Schedule(func)
    sch.pad_einsum(sch.get_sblock("C"), [8, 16, 1])
    real = [int(sch.get(lp).extent) for lp in sch.get_loops(sch.get_sblock("C"))]
    model = interpret(func, sch.trace)
    assert [lp.extent for lp in model.blocks["C"].loops] == real == [64, 48, 32]


def _row_sum_rfactor(*inner: int):
    a = te.placeholder((64, 96), name="A")
    r = te.reduce_axis((0, 96), name="k")
    func = te.create_prim_func([a, te.compute((64,), lambda i: te.sum(a[i, r], axis=r), name="S")])
    sch = s_tir.Schedule(func)
    _, k = sch.get_loops(sch.get_sblock("S"))
    k1 = sch.split(k, factors=[None, *inner])[-1]
    rf = sch.rfactor(k1, factor_axis=0)
    sch.vectorize(sch.get_loops(rf)[-1])
    return func, sch


def test_rfactor_matches_the_simple_reduction_knob():
    func, sch = _row_sum_rfactor(8)
    model = interpret(func, sch.trace)
    assert model.blocks["S_rf"].origin == "rfactor"
    assert model.blocks["S_rf"].loops[-1].binding == "vectorized"
    assert find_gaps(model, build_template(func, HW)) == []
    func, sch = _row_sum_rfactor(2, 4)  # a reduction split in three: no such knob
    gaps = find_gaps(interpret(func, sch.trace), build_template(func, HW))
    assert [(g.block, g.feature) for g in gaps] == [("S", "tiling")]
