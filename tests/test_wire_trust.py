"""No client-supplied string reaches code generation, and no document buys unbounded work.

TVM turns block annotations into attribute statements, and its CPU code generator acts on some
of them (``pragma_import_llvm`` links a string, or a ``.ll`` file, as LLVM IR into the kernel).
So we walk everything the build side makes from a document: the PrimFunc the server builds, the
scheduled module (static and random configs) and the module after TVM's lowering passes, just
before code generation. We collect every string in block, loop and allocation annotations,
attribute statements (pragmas), function attributes and string immediates, and check that no
marker planted in a client-controlled slot is among them. Names are identifiers and may appear
as names (buffers, blocks, loop variables, and the argument checks TVM generates from buffer
names), never as annotation, pragma or attribute values. Every other text slot (tag, attrs) is
either refused with a path, or limited to a fixed vocabulary.
"""

from __future__ import annotations

import copy
import random
import re
import time
from typing import Any

import pytest
import tvm
import tvm_ffi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import te, tirx
from tvm.tirx.build import split_host_device_mods

from autosched import zoo
from autosched.errors import WireFormatError
from autosched.hardware import cpu_target, detect_hardware
from autosched.schedule import apply_config, build_template, static_config
from autosched.settings import get_settings
from autosched.wire import Workload, serialize
from autosched.wire.ops import TOPI_TAGS
from tests.wire_support import block_annotations

MARK = "zqmk"  # every planted marker starts with this; TVM itself never emits it

TRUST = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


# ---------------------------------------------------------------------------------------------
# Where strings could reach code generation


def _strings_in(value: Any) -> list[str]:
    """Every string inside an attribute value: str, StringImm, arrays and maps of them, and
    any StringImm nested in an IR object."""
    out: list[str] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            out.append(str(v))
        elif isinstance(v, tvm.ir.StringImm):
            out.append(str(v.value))
        elif isinstance(v, tvm_ffi.Map | dict):
            for k, x in v.items():
                stack += [k, x]
        elif isinstance(v, tvm_ffi.Array | list | tuple):
            stack += list(v)
        elif isinstance(v, tvm.target.Target):
            out.append(str(v))
        elif isinstance(v, tvm.runtime.Object):
            tvm_ffi.structural_walk(v, (tvm.ir.StringImm, lambda s: out.append(str(s.value))))
    return out


def exposed_strings(ir: tirx.PrimFunc | tvm.IRModule) -> list[tuple[str, str]]:
    """(where, string) for every string a code generator could act on."""
    found: list[tuple[str, str]] = []

    def add(where: str, value: Any) -> None:
        found.extend((where, s) for s in _strings_in(value))

    funcs = list(ir.functions.values()) if isinstance(ir, tvm.IRModule) else [ir]
    for f in funcs:
        for k, v in (f.attrs or {}).items():
            add("function attribute key", k)
            add(f"function attribute {k}", v)

    def annotations(kind: str) -> Any:
        def visit(node: Any) -> None:
            for k, v in node.annotations.items():
                add(f"{kind} annotation key", k)
                add(f"{kind} annotation {k}", v)

        return visit

    def attr_stmt(node: tirx.AttrStmt) -> None:
        add("AttrStmt key", node.attr_key)
        if isinstance(node.node, str | tvm.ir.StringImm):
            add(f"AttrStmt {node.attr_key} node", node.node)
        add(f"AttrStmt {node.attr_key} value", node.value)

    for ir_type, visit in (
        (tvm.s_tir.SBlock, annotations("block")),
        (tirx.For, annotations("loop")),
        (tirx.AllocBuffer, annotations("allocation")),
        (tirx.AttrStmt, attr_stmt),
        (tvm.ir.StringImm, lambda s: add("StringImm", s)),
    ):
        for f in funcs:
            tvm_ffi.structural_walk(f, (ir_type, visit))
    return found


def lowered(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """``mod`` after TVM 0.27's lowering passes, just before code generation: the steps of
    ``tvm.tirx.build`` up to ``tir_to_runtime``."""
    mod = tvm.tirx.transform.BindTarget(target.with_host(target))(mod)
    pipeline, finalize_host, _ = tvm.tirx.get_default_tir_pipeline(target)
    host, _devices = split_host_device_mods(pipeline(mod))
    return finalize_host()(host)


@pytest.fixture(scope="module")
def hw() -> Any:
    return detect_hardware()


def _build_side(doc: dict[str, Any], hw: Any, random_configs: int) -> list[tuple[str, Any]]:
    """What the server, the scheduler and a builder make from ``doc``."""
    func = Workload.from_json(doc).prim_func
    template = build_template(func, hw)
    rng = random.Random(0)
    configs = [static_config(func, hw)] + [template.sample(rng) for _ in range(random_configs)]
    target = cpu_target(hw)
    out: list[tuple[str, Any]] = [("PrimFunc", func)]
    for n, config in enumerate(configs):
        mod = apply_config(func, config, hw, template).mod
        out += [(f"scheduled #{n}", mod), (f"lowered #{n}", lowered(mod, target))]
    return out


def assert_no_marker(doc: dict[str, Any], hw: Any, random_configs: int = 0) -> None:
    built = _build_side(doc, hw, random_configs)
    # The markers are there, as names: the test plants what it looks for.
    assert all(MARK in str(p.name) for p in built[0][1].params)
    for what, ir in built:
        leaks = [(where, s) for where, s in exposed_strings(ir) if MARK in s]
        assert not leaks, f"{what}: {leaks[:5]}"


def test_the_walk_finds_a_planted_pragma(hw: Any) -> None:
    """The collector is not blind: a pragma planted past the wire format (straight through te)
    is seen in the PrimFunc, the scheduled module and the lowered module."""
    a = te.placeholder((8, 8), "float32", name="A")
    b = te.compute(
        (8, 8), lambda i, j: a[i, j] * 2.0, name="B", attrs={"pragma_x": f"{MARK}_pragma"}
    )
    func = te.create_prim_func([a, b])
    config = static_config(func, hw)
    mod = apply_config(func, config, hw).mod
    for ir in (func, mod, lowered(mod, cpu_target(hw))):
        assert any(MARK in s for _, s in exposed_strings(ir)), ir


def test_tag_does_not_reach_the_build(hw: Any) -> None:
    """Why the tag is only vocabulary-checked, not dropped: te's op tag is not in the PrimFunc
    that te.create_prim_func builds, nor in its structural hash, nor in the lowered module."""
    a = te.placeholder((8, 8), "float32", name="A")
    tagged = te.compute((8, 8), lambda i, j: a[i, j] + 1.0, name="B", tag=f"{MARK}_tag")
    plain = te.compute((8, 8), lambda i, j: a[i, j] + 1.0, name="B")
    func = te.create_prim_func([a, tagged])
    assert tvm_ffi.structural_hash(func) == tvm_ffi.structural_hash(te.create_prim_func([a, plain]))
    low = lowered(tvm.IRModule({"main": func}), cpu_target(hw))
    for ir in (func, low):
        assert MARK not in ir.script(show_meta=True)


# ---------------------------------------------------------------------------------------------
# Generated documents: every name slot holds a marker


def _v(name: str) -> dict[str, Any]:
    return {"op": "var", "name": name}


def _r(tensor: str, *idx: dict[str, Any]) -> dict[str, Any]:
    return {"op": "read", "tensor": tensor, "indices": list(idx)}


def _i(value: int, dtype: str) -> dict[str, Any]:
    return {"op": "int", "value": value, "dtype": dtype}


def _stage(name: str, shape: list[int], axes: list[str], body: Any, idx: str) -> dict[str, Any]:
    return {
        "name": name,
        "shape": shape,
        "dtype": "float32",
        "axes": axes,
        "body": body,
        "index_dtype": idx,
    }


def _ph(name: str, shape: list[int], idx: str) -> dict[str, Any]:
    return {"name": name, "shape": shape, "dtype": "float32", "index_dtype": idx}


def _doc(pattern: str, salt: str, sizes: list[int], idx: str) -> dict[str, Any]:
    """A small valid document of one of three shapes (complex reduction with an epilogue,
    padding + 1-D convolution, simple reduction + elementwise), every name a marker."""
    n = [f"{MARK}{salt}{i}" for i in range(16)]  # tensor and axis names
    m, k, w = sizes
    if pattern == "matmul":
        placeholders = [_ph(n[0], [m, k], idx), _ph(n[1], [k, w], idx), _ph(n[2], [w], idx)]
        stages = [
            _stage(
                n[3],
                [m, w],
                [n[8], n[9]],
                {
                    "op": "reduce",
                    "reducer": "sum",
                    "axes": [{"name": n[10], "extent": k}],
                    "source": {
                        "op": "mul",
                        "a": _r(n[0], _v(n[8]), _v(n[10])),
                        "b": _r(n[1], _v(n[10]), _v(n[9])),
                    },
                },
                idx,
            ),
            _stage(
                n[4],
                [m, w],
                [n[11], n[12]],
                {
                    "op": "max",
                    "a": {
                        "op": "add",
                        "a": _r(n[3], _v(n[11]), _v(n[12])),
                        "b": _r(n[2], _v(n[12])),
                    },
                    "b": {"op": "float", "value": 0.0},
                },
                idx,
            ),
        ]
        stages[0]["attrs"] = {"layout_free_placeholders": {"tensors": [n[1]]}}
        stages[0]["tag"] = "dense"
        out, args = n[4], [n[0], n[1], n[2], n[4]]
    elif pattern == "conv1d":
        # P = zero-pad(X) by 1 on each side; Y[f, x] = sum_{c, r} P[c, x + r] * W[f, c, r].
        placeholders = [_ph(n[0], [k, w], idx), _ph(n[1], [m, k, 3], idx)]
        x = _v(n[9])
        inside = {
            "op": "and",
            "a": {"op": "ge", "a": x, "b": _i(1, idx)},
            "b": {"op": "lt", "a": x, "b": _i(w + 1, idx)},
        }
        shifted = {"op": "sub", "a": x, "b": _i(1, idx)}
        pad = {
            "op": "if_then_else",
            "condition": inside,
            "true_value": _r(n[0], _v(n[8]), shifted),
            "false_value": {"op": "float", "value": 0.0},
        }
        conv = {
            "op": "reduce",
            "reducer": "sum",
            "axes": [{"name": n[12], "extent": k}, {"name": n[13], "extent": 3}],
            "source": {
                "op": "mul",
                "a": _r(n[2], _v(n[12]), {"op": "add", "a": _v(n[11]), "b": _v(n[13])}),
                "b": _r(n[1], _v(n[10]), _v(n[12]), _v(n[13])),
            },
        }
        stages = [
            _stage(n[2], [k, w + 2], [n[8], n[9]], pad, idx),
            _stage(n[3], [m, w], [n[10], n[11]], conv, idx),
        ]
        stages[0]["tag"] = "injective,pad"
        out, args = n[3], [n[0], n[1], n[3]]
    else:  # rowmax: R[i] = max_j X[i, j]; E[i, j] = exp(X[i, j] - R[i])
        placeholders = [_ph(n[0], [m, w], idx)]
        rmax = {
            "op": "reduce",
            "reducer": "max",
            "axes": [{"name": n[9], "extent": w}],
            "source": _r(n[0], _v(n[8]), _v(n[9])),
        }
        diff = {"op": "sub", "a": _r(n[0], _v(n[10]), _v(n[11])), "b": _r(n[1], _v(n[10]))}
        stages = [
            _stage(n[1], [m], [n[8]], rmax, idx),
            _stage(n[2], [m, w], [n[10], n[11]], {"op": "call", "fn": "exp", "args": [diff]}, idx),
        ]
        out, args = n[2], [n[0], n[2]]
    return {
        "format_version": 1,
        "name": f"{MARK}{salt}doc",
        "placeholders": placeholders,
        "stages": stages,
        "outputs": [out],
        "args": args,
    }


_salts = st.from_regex(r"[A-Za-z0-9_]{0,12}", fullmatch=True)
_docs = st.builds(
    _doc,
    st.sampled_from(["matmul", "conv1d", "rowmax"]),
    _salts,
    st.lists(st.integers(1, 24), min_size=3, max_size=3),
    st.sampled_from(["int32", "int64"]),
)


@TRUST
@given(doc=_docs)
def test_generated_names_never_reach_annotations(doc: dict[str, Any]) -> None:
    hw = detect_hardware()
    func = Workload.from_json(doc).prim_func
    # A server-built PrimFunc has no block annotation at all: the one accepted attr becomes a
    # function attribute holding parameter indices.
    assert all(not a for a in block_annotations(func).values())
    assert_no_marker(doc, hw, random_configs=2)


def _rename_to_markers(doc: dict[str, Any], salt: str) -> dict[str, Any]:
    """Every tensor, axis and reduce-axis name (and the document's name) becomes a marker."""
    doc = copy.deepcopy(doc)
    names: dict[str, str] = {}

    def fresh(old: str) -> str:
        return names.setdefault(old, f"{MARK}{salt}{len(names)}")

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("name", "tensor"):
                if isinstance(node.get(key), str):
                    node[key] = fresh(node[key])
            if isinstance(node.get("axes"), list):
                node["axes"] = [fresh(a) if isinstance(a, str) else a for a in node["axes"]]
            if isinstance(node.get("tensors"), list):
                node["tensors"] = [fresh(t) for t in node["tensors"]]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    doc["outputs"] = [fresh(o) for o in doc["outputs"]]
    doc["args"] = [fresh(a) for a in doc["args"]]
    return doc


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_names_never_reach_annotations(name: str, hw: Any) -> None:
    doc = _rename_to_markers(serialize(zoo.tensors(name), name), "zoo")
    assert_no_marker(doc, hw, random_configs=1)


# ---------------------------------------------------------------------------------------------
# Every other text slot: refused with a path, before anything is built


def _base() -> dict[str, Any]:
    return _doc("matmul", "", [4, 8, 6], "int32")


def _refused(doc: dict[str, Any], path: str, pattern: str = "") -> WireFormatError:
    with pytest.raises(WireFormatError) as info:
        Workload.from_json(doc)
    err = info.value
    assert err.path == path, (err.path, err.message)
    assert re.search(pattern, err.message), err.message
    return err


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("pragma_import_llvm", "define void @f() { ret void }"),
        ("pragma_import_llvm", "/etc/kernel.ll"),
        ("pragma_import_c", "int main() { return 0; }"),
        ("pragma_import_llvm", {"tensors": ["A"]}),
        ("schedule_rule", "meta_schedule.pool_max"),
        ("axis", 1),
        ("layout_free_placeholder", {"tensors": ["A"]}),  # a near miss of the allowed key
        ("Layout_free_placeholders", {"tensors": ["A"]}),
        ("pragma_auto_unroll_max_step", 4096),
        ("meta_schedule.parallel", 64),
        ("", 1),
    ],
)
def test_attr_keys_outside_the_allow_list_are_refused(key: str, value: Any) -> None:
    doc = _base()
    doc["stages"][1]["attrs"] = {key: value}
    err = _refused(doc, f"stages[1].attrs.{key}", "allowed attrs: layout_free_placeholders")
    assert repr(key) in err.message


@pytest.mark.parametrize(
    "value",
    ["kernel.ll", ["kernel.ll"], {"tensors": ["kernel.ll"]}, {"tensors": [f"{MARK}.ll"]}, 1],
)
def test_allowed_attr_takes_only_placeholder_names(value: Any) -> None:
    doc = _base()
    doc["stages"][0]["attrs"] = {"layout_free_placeholders": value}
    with pytest.raises(WireFormatError) as info:
        Workload.from_json(doc)
    assert info.value.path.startswith("stages[0].attrs.layout_free_placeholders")


_text = st.text(max_size=40)


@TRUST
@given(key=_text.filter(lambda k: k != "layout_free_placeholders"), value=_text)
def test_any_other_attr_key_is_refused(key: str, value: str) -> None:
    doc = _base()
    doc["stages"][1]["attrs"] = {key: f"{MARK}{value}"}
    _refused(doc, f"stages[1].attrs.{key}", "allowed attrs")


@TRUST
@given(tag=_text.filter(lambda t: t not in TOPI_TAGS))
def test_tags_outside_the_vocabulary_are_refused(tag: str) -> None:
    doc = _base()
    doc["stages"][0]["tag"] = tag
    _refused(doc, "stages[0].tag", "'elemwise'")


def test_vocabulary_tags_are_accepted_and_change_nothing() -> None:
    keys = set()
    for tag in TOPI_TAGS:
        doc = _base()
        doc["stages"][1]["tag"] = tag
        keys.add(Workload.from_json(doc).key)
    assert len(keys) == 1


# ---------------------------------------------------------------------------------------------
# Work caps: refused fast, whatever the extent


def _reduce_doc(extent: int, idx: str = "int64") -> dict[str, Any]:
    """S[i] = sum_k X[i, 0] over a 4x4 input: a few bytes, ``extent`` iterations per output."""
    return {
        "format_version": 1,
        "placeholders": [_ph("X", [4, 4], idx)],
        "stages": [
            _stage(
                "S",
                [4],
                ["i"],
                {
                    "op": "reduce",
                    "reducer": "sum",
                    "axes": [{"name": "k", "extent": extent}],
                    "source": _r("X", _v("i"), _i(0, idx)),
                },
                idx,
            )
        ],
        "outputs": ["S"],
        "args": ["X", "S"],
    }


@pytest.mark.parametrize("exp", [31, 40, 52, 62])
def test_huge_int64_extents_are_refused_fast(exp: int) -> None:
    start = time.perf_counter()
    _refused(_reduce_doc(2**exp), "stages[0].body.axes[0].extent", "over max_axis_extent")
    assert time.perf_counter() - start < 0.5


def test_extent_at_the_cap_is_accepted() -> None:
    assert Workload.from_json(_reduce_doc(get_settings().max_axis_extent)).key


def test_many_big_stages_hit_the_workload_cap() -> None:
    """Each stage is under max_stage_iterations; together they are over the workload cap."""
    s = get_settings()
    per_stage = 2**13 * 2**30
    assert per_stage <= s.max_stage_iterations
    count = s.max_workload_iterations // per_stage + 1
    stages = [
        _stage(
            f"S{n}",
            [2**13],
            ["i"],
            {
                "op": "reduce",
                "reducer": "sum",
                "axes": [{"name": "k", "extent": 2**30}],
                "source": _r("X", _i(0, "int32")),
            },
            "int32",
        )
        for n in range(count)
    ]
    doc = {
        "format_version": 1,
        "placeholders": [_ph("X", [4], "int32")],
        "stages": stages,
        "outputs": [st["name"] for st in stages],
        "args": ["X", *(st["name"] for st in stages)],
    }
    start = time.perf_counter()
    _refused(doc, f"stages[{count - 1}].body.axes", "over max_workload_iterations")
    assert time.perf_counter() - start < 0.5
    doc["stages"], doc["outputs"], doc["args"] = stages[:-1], doc["outputs"][:-1], doc["args"][:-1]
    assert Workload.from_json(doc).key  # one stage fewer fits


def test_one_stage_over_its_cap() -> None:
    doc = _reduce_doc(2**30, "int32")
    doc["placeholders"][0]["shape"] = [2**15, 4]
    doc["stages"][0]["shape"] = [2**15]
    _refused(doc, "stages[0].body.axes", r"runs .* \(2\^45\) iterations.*max_stage_iterations")
