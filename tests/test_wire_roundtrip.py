"""serialize -> JSON -> deserialize gives back the same computation, with the same key."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from typing import Any

import pytest
import tvm
from tvm import te, tirx, topi

from autosched import WIRE_FORMAT_VERSION, zoo
from autosched.errors import SerializeError
from autosched.wire import (
    ComputeDAG,
    Workload,
    deserialize,
    load_workload,
    serialize,
    workload_key,
)
from autosched.wire.ops import (
    BINARY_OPS,
    INTRINSICS,
    UNARY_OPS,
    BinaryOpName,
    IntrinsicName,
    UnaryOpName,
)
from tests.wire_support import block_annotations, without_block_annotations


def _block_names(func: tirx.PrimFunc) -> list[str]:
    sch = tvm.s_tir.Schedule(func)
    return [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]


def _roundtrip(tensors: list[te.Tensor], via_text: bool = False) -> tuple[Any, Any]:
    """(original PrimFunc less TVM's scheduler hints, which serialize drops; rebuilt one)."""
    doc = serialize(tensors)
    if via_text:
        doc = json.loads(json.dumps(doc))
    original = without_block_annotations(te.create_prim_func(tensors))
    return original, te.create_prim_func(deserialize(doc))


# topi's hints for TVM's own schedulers: the only thing serialize leaves out of these kernels.
_ZOO_HINTS = {
    "max_pool": {"schedule_rule"},
    "softmax": {"axis"},
    "lenet": {"schedule_rule", "axis"},
}


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_roundtrip(name: str) -> None:
    tensors = zoo.tensors(name)
    hints = {k for a in block_annotations(te.create_prim_func(tensors)).values() for k in a}
    assert hints == _ZOO_HINTS.get(name, set())
    original, rebuilt = _roundtrip(tensors)
    tvm.ir.assert_structural_equal(original, rebuilt)
    assert workload_key(original) == workload_key(rebuilt)
    if not hints:  # nothing dropped: the client's own PrimFunc has the server's key
        assert workload_key(te.create_prim_func(tensors)) == workload_key(rebuilt)
    # Structural equality ignores names, but traces find blocks by name: keep them too.
    assert _block_names(original) == _block_names(rebuilt)


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_roundtrip_through_text(name: str) -> None:
    tensors = zoo.tensors(name)
    text = json.dumps(serialize(tensors, name))
    rebuilt = deserialize(text)
    # Stage names repeated in the DAG (topi's T_add twice) come back made unique.
    assert [t.name for t in rebuilt] == [t.name for t in tensors] or name in ("lenet", "mlp")
    tvm.ir.assert_structural_equal(
        without_block_annotations(te.create_prim_func(tensors)), te.create_prim_func(rebuilt)
    )
    # Bytes in, too, and serializing again is a fixed point.
    assert serialize(deserialize(text.encode()), name) == json.loads(text)


def test_zoo_keys_are_distinct() -> None:
    keys = {workload_key(zoo.prim_func(n)) for n in zoo.names()}
    assert len(keys) == len(zoo.names())
    assert all(k.startswith(f"v{WIRE_FORMAT_VERSION}-") and len(k) == 19 for k in keys)


def _rename(doc: dict[str, Any]) -> dict[str, Any]:
    """Rename every tensor and axis in a document."""
    doc = copy.deepcopy(doc)
    tensors = {p["name"]: f"T{i}" for i, p in enumerate(doc["placeholders"] + doc["stages"])}

    def walk(node: Any, axes: dict[str, str]) -> None:
        if isinstance(node, list):
            for x in node:
                walk(x, axes)
        elif isinstance(node, dict):
            if node.get("op") == "var":
                node["name"] = axes[node["name"]]
            elif node.get("op") == "read":
                node["tensor"] = tensors[node["tensor"]]
            elif node.get("op") == "reduce":
                for ax in node["axes"]:
                    axes[ax["name"]] = f"r_{ax['name']}"
                    ax["name"] = axes[ax["name"]]
            for v in node.values():
                walk(v, axes)

    for p in doc["placeholders"]:
        p["name"] = tensors[p["name"]]
    for st in doc["stages"]:
        axes = {a: f"x{i}" for i, a in enumerate(st["axes"])}
        st["axes"] = list(axes.values())
        st["name"] = tensors[st["name"]]
        walk(st["body"], axes)
        for v in st.get("attrs", {}).values():
            if isinstance(v, dict):
                v["tensors"] = [tensors[t] for t in v["tensors"]]
    doc["outputs"] = [tensors[t] for t in doc["outputs"]]
    doc["args"] = [tensors[t] for t in doc["args"]]
    doc["name"] = "renamed"
    return doc


@pytest.mark.parametrize("name", ["matmul_512", "conv2d_bias_relu", "softmax", "lenet"])
def test_key_ignores_names(name: str) -> None:
    doc = serialize(zoo.tensors(name), name)
    renamed = _rename(doc)
    assert renamed != doc
    a, b = Workload.from_json(doc), Workload.from_json(renamed)
    assert a.key == b.key
    assert a == b and hash(a) == hash(b)
    assert b.name == "renamed"


def test_key_differs_by_shape_and_dtype() -> None:
    def mm(n: int, dtype: str) -> str:
        a = te.placeholder((n, n), dtype, name="A")
        b = te.placeholder((n, n), dtype, name="B")
        k = te.reduce_axis((0, n), name="k")
        c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
        return Workload.from_tensors([a, b, c]).key

    keys = {mm(64, "float32"), mm(65, "float32"), mm(64, "float16"), mm(64, "int32")}
    assert len(keys) == 4
    assert mm(64, "float32") == mm(64, "float32")


_KEY_SCRIPT = """
import json, sys
from autosched import zoo
from autosched.wire import Workload, workload_key
print(json.dumps({n: [workload_key(zoo.prim_func(n)), Workload.from_tensors(zoo.tensors(n)).key]
                  for n in sys.argv[1:]}))
"""


def test_key_stable_across_processes() -> None:
    names = ["matmul_512", "conv2d_resnet_c2", "lenet"]
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", _KEY_SCRIPT, *names],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    for n in names:
        local, served = workload_key(zoo.prim_func(n)), Workload.from_tensors(zoo.tensors(n)).key
        assert theirs[n] == [local, served]
        # The served key is the computation's: the local PrimFunc less topi's scheduler hints.
        assert served == workload_key(without_block_annotations(zoo.prim_func(n)))


def test_workload_api(tmp_path: Any) -> None:
    tensors = zoo.tensors("conv2d_bias_relu")
    w = Workload.from_tensors(tensors, "conv")
    assert w.name == "conv"
    assert isinstance(w.dag, ComputeDAG)
    assert w.key == workload_key(te.create_prim_func(tensors))
    assert [t.name for t in w.tensors] == [t.name for t in tensors]
    tvm.ir.assert_structural_equal(w.prim_func, te.create_prim_func(tensors))
    doc = w.to_json()
    assert doc == serialize(tensors, "conv")
    path = tmp_path / "conv.json"
    path.write_text(json.dumps(doc))
    again = load_workload(path)
    assert again.key == w.key and again == w
    assert Workload.from_json(w.dag).key == w.key
    with pytest.raises(dataclass_frozen_error()):
        w.key = "x"  # type: ignore[misc]


def dataclass_frozen_error() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


# ---------------------------------------------------------------------------------------------
# Everything the format can express, beyond what the zoo uses.


def _kitchen_sink() -> list[te.Tensor]:
    a = te.placeholder((4, 6), "float32", name="A")
    h = te.placeholder((6,), "float16", name="H")
    n = te.placeholder((4,), "int32", name="N")
    b = te.placeholder((4, 6), "bool", name="Bm")

    def unary_chain(i: Any, j: Any) -> Any:
        x = a[i, j].asobject()
        acc = x
        for fn, intr in INTRINSICS.items():
            if intr.arg_kind != "float":
                continue
            ret = "bool" if intr.result == "bool" else "float32"
            c = tirx.call_intrin(ret, intr.op_name, *([x] * intr.arity))
            if intr.result == "bool":
                c = tirx.Select(c, x, tirx.FloatImm("float32", 0.0))
            acc = tirx.Add(acc, c) if fn != "exp" else tirx.Mul(acc, c)
        return acc

    s_unary = te.compute((4, 6), unary_chain, name="unary")

    def logic(i: Any, j: Any) -> Any:
        c = tirx.And(b[i, j].asobject(), tirx.Not(tirx.Or(i > 2, j <= 1)))
        c = tirx.Or(c, tirx.And(tirx.EQ(i, j), tirx.IntImm("bool", 1)))
        c = tirx.And(c, tirx.NE(tirx.FloorMod(i, 2), tirx.FloorDiv(j, 3)))
        c = tirx.And(c, tirx.GE(tirx.Mod(i, 3), tirx.Div(j, 2)))
        c = tirx.Or(c, tirx.LT(tirx.BitwiseAnd(i, j), tirx.BitwiseXor(i, tirx.BitwiseNot(j))))
        c = tirx.Or(c, tirx.GT(tirx.LShift(i, 1), tirx.RShift(tirx.BitwiseOr(i, j), 1)))
        c = tvm.ir.Call(tvm.ir.Op.get("prim.likely"), [c], ret_ty="bool")
        v = tirx.if_then_else(c, s_unary[i, j], tirx.Cast("float32", h[j]))
        return tirx.Select(
            tirx.LE(n[i], tirx.IntImm("int32", 3)),
            tirx.Min(v, tirx.FloatImm("float32", float("inf"))),
            tirx.Max(tirx.Sub(v, tirx.FloatImm("float32", 1.5)), tirx.FloatImm("float32", -1e30)),
        )

    s_logic = te.compute((4, 6), logic, name="logic", tag="injective")
    k = te.reduce_axis((2, 6), name="k")
    s_sum = te.compute(
        (4,),
        lambda i: te.sum(s_logic[i, k], axis=k, where=k > 3, init=s_logic[i, 0]),
        name="cond_sum",
    )
    mx = te.comm_reducer(
        lambda x, y: tirx.Max(x, y), lambda t: tirx.FloatImm(t, float("-inf")), name="mx"
    )
    r = te.reduce_axis((0, 6), name="r")
    s_max = te.compute((4,), lambda i: mx(s_logic[i, r], axis=r), name="max_inf")
    r2 = te.reduce_axis((0, 4), name="r2")
    s_min = te.compute(
        (),
        lambda: te.min(tirx.Cast("int32", s_sum[r2] + s_max[r2]) * n[r2], axis=r2),
        name="scalar_min",
        attrs={"layout_free_placeholders": [n]},
    )
    return [a, h, n, b, s_min, s_sum]


def test_kitchen_sink_roundtrip() -> None:
    tensors = _kitchen_sink()
    doc = serialize(tensors, "sink")
    text = json.dumps(doc, allow_nan=False)  # the document itself is strict JSON
    ops_seen = set()
    stack: list[Any] = [doc]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            ops_seen.add(x.get("op"))
            if x.get("op") == "call":
                ops_seen.add(f"call:{x['fn']}")
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    expected = set(BINARY_OPS) | set(UNARY_OPS) | {f"call:{f}" for f in INTRINSICS}
    expected |= {"int", "float", "bool", "var", "read", "select", "if_then_else", "cast"}
    expected |= {"reduce"}
    assert expected <= ops_seen, expected - ops_seen
    assert '"-inf"' in text and '"inf"' in text
    original, rebuilt = te.create_prim_func(tensors), te.create_prim_func(deserialize(text))
    tvm.ir.assert_structural_equal(original, rebuilt)
    assert workload_key(original) == workload_key(rebuilt)


def test_literals_match_tables() -> None:
    from typing import get_args

    assert set(get_args(BinaryOpName)) == set(BINARY_OPS)
    assert set(get_args(UnaryOpName)) == set(UNARY_OPS)
    assert set(get_args(IntrinsicName)) == set(INTRINSICS)
    registered = set(tvm.ir.Op.list_op_names())
    assert {i.op_name for i in INTRINSICS.values()} <= registered
    # Ops without a call-effect kind make te.create_prim_func fail (tirx.isinf does in 0.27).
    for intr in INTRINSICS.values():
        assert tvm.ir.Op.get(intr.op_name).get_attr("TCallEffectKind") is not None, intr


def test_int64_shapes_roundtrip() -> None:
    n = tirx.IntImm("int64", 16)
    x = te.placeholder((n, n), "float32", name="X")
    k = te.reduce_axis((tirx.IntImm("int64", 0), n), name="k")
    y = te.compute((n,), lambda i: te.sum(x[i, k], axis=k), name="Y")
    doc = serialize([x, y])
    assert doc["stages"][0]["index_dtype"] == "int64"
    original, rebuilt = te.create_prim_func([x, y]), te.create_prim_func(deserialize(doc))
    tvm.ir.assert_structural_equal(original, rebuilt)
    # The same computation with int32 indices is a different PrimFunc, so a different key.
    x32 = te.placeholder((16, 16), "float32", name="X")
    k32 = te.reduce_axis((0, 16), name="k")
    y32 = te.compute((16,), lambda i: te.sum(x32[i, k32], axis=k32), name="Y")
    assert workload_key(te.create_prim_func([x32, y32])) != workload_key(original)


def test_topi_extras_roundtrip() -> None:
    """A few more topi ops: they use casts, erf, tanh, integer ops and max-pools with -inf."""
    x = te.placeholder((2, 8, 10, 10), "float32", name="x")
    outs = [
        topi.nn.pool2d(x, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), "avg"),
        topi.tanh(topi.erf(topi.sigmoid(x))),
        topi.cast(topi.nn.relu(topi.cast(x, "int32")), "float16"),
        topi.sum(x, axis=(2, 3)),
        topi.image.resize2d(x, (0.0, 0.0, 1.0, 1.0), (5, 5), method="linear"),
    ]
    for out in outs:
        original, rebuilt = _roundtrip([x, out], via_text=True)
        tvm.ir.assert_structural_equal(original, rebuilt)


def test_serialize_refuses_what_it_cannot_say() -> None:
    x = te.placeholder((4,), "float32", name="x")
    n = te.var("n")
    with pytest.raises(SerializeError, match="symbolic"):
        serialize([te.placeholder((n,), "float32", name="d"), te.compute((n,), lambda i: x[0])])
    two = te.compute((4,), lambda i: (x[i] + 1.0, x[i] * 2.0), name="two")
    with pytest.raises(SerializeError, match="multi-output"):
        serialize([x, two[0]])
    with pytest.raises(SerializeError, match="missing from the argument list"):
        serialize([te.compute((4,), lambda i: x[i] + 1.0, name="y")])
    prod = te.comm_reducer(lambda a, b: a * b, lambda t: tirx.const(1, t), name="prod")
    k = te.reduce_axis((0, 4), name="k")
    with pytest.raises(SerializeError, match="reducer"):
        serialize([x, te.compute((1,), lambda i: prod(x[k], axis=k), name="p")])
    # Adaptive pooling's reduce extents depend on the output position: not expressible.
    with pytest.raises(SerializeError, match="symbolic range"):
        serialize(
            [
                x4 := te.placeholder((1, 2, 7, 7), name="x4"),
                topi.nn.adaptive_pool(x4, (3, 3), "avg"),
            ]
        )
    with pytest.raises(SerializeError, match=r"not a te\.Tensor"):
        serialize([x, "y"])  # type: ignore[list-item]


def test_serialize_keeps_only_what_the_server_accepts() -> None:
    """TVM's scheduler hints and tags outside TOPI's vocabulary are left out (they do not
    change the computation); a pragma, which changes the generated code, is an error."""
    x = te.placeholder((4, 4), "float32", name="x")
    w = te.placeholder((4, 4), "float32", name="w")
    hinted = te.compute(
        (4, 4),
        lambda i, j: x[i, j] * w[i, j],
        name="y",
        tag="my_custom_tag",
        attrs={"schedule_rule": "meta_schedule.x", "axis": 1, "layout_free_placeholders": [w]},
    )
    doc = serialize([x, w, hinted])
    assert doc["stages"][0]["tag"] == ""
    assert doc["stages"][0]["attrs"] == {"layout_free_placeholders": {"tensors": ["w"]}}
    tvm.ir.assert_structural_equal(
        without_block_annotations(te.create_prim_func([x, w, hinted])),
        te.create_prim_func(deserialize(doc)),
    )
    tagged = te.compute((4, 4), lambda i, j: x[i, j] + 1.0, name="t", tag="elemwise")
    assert serialize([x, tagged])["stages"][0]["tag"] == "elemwise"
    for key in ("pragma_import_llvm", "pragma_import_c"):
        bad = te.compute((4,), lambda i: x[i, 0], name="p", attrs={key: "kernel.ll"})
        with pytest.raises(SerializeError, match=f"{key}.*pragma"):
            serialize([x, bad])
