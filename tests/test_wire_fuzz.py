"""Fuzz the decoder: whatever comes in, the only exception that comes out is WireFormatError.

Runs in-process on purpose: a TVM crash (segfault) on some input would take pytest down with it,
which is exactly what this test must catch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autosched import zoo
from autosched.errors import WireFormatError
from autosched.wire import Workload, deserialize, serialize
from autosched.wire.ops import BINARY_OPS, DTYPES, INTRINSICS, REDUCERS, UNARY_OPS
from tests.wire_support import base

# AUTOSCHED_FUZZ_EXAMPLES=20000 for a deeper run; CI keeps the default small and fast.
pytestmark = pytest.mark.slow  # fuzzing

FUZZ = settings(
    max_examples=int(os.environ.get("AUTOSCHED_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Strings the decoder gives meaning to, so random documents get past the first checks.
_OPS = [
    *BINARY_OPS,
    *UNARY_OPS,
    "int",
    "float",
    "bool",
    "var",
    "read",
    "select",
    "if_then_else",
    "cast",
    "call",
    "reduce",
]
_FIELDS = [
    "op", "a", "b", "value", "dtype", "name", "tensor", "indices", "condition", "true_value",
    "false_value", "fn", "args", "reducer", "axes", "source", "identity", "init", "extent",
    "start", "shape", "body", "index_dtype", "tag", "attrs", "tensors", "placeholders", "stages",
    "outputs", "format_version",
]  # fmt: skip
_NAMES = ["A", "B", "C", "D", "bias", "i", "j", "k", "x", "y", "pad_temp", "data"]
_WORDS = [*_OPS, *_FIELDS, *_NAMES, *DTYPES, *INTRINSICS, *REDUCERS, "inf", "-inf", "nan", ""]

_ints = st.sampled_from([0, 1, 2, 3, 4, -1, 2**31 - 1, 2**31, 2**63, -(2**63) - 1, 10**40]) | (
    st.integers()
)
_floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1.5, 1e300])
_scalars = (
    st.none() | st.booleans() | _ints | _floats | st.sampled_from(_WORDS) | st.text(max_size=8)
)
_keys = st.sampled_from(_FIELDS) | st.text(max_size=6)
json_ish = st.recursive(
    _scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(_keys, c, max_size=5),
    max_leaves=40,
)


def _expr_like(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Well-formed expression nodes with random operators, names and dtypes: they get past the
    models, so the semantic checks and the TVM builder are what gets exercised."""
    small = st.integers(-3, 9) | _ints
    ints = st.builds(
        lambda v, d: {"op": "int", "value": v, "dtype": d},
        small,
        st.sampled_from(["int32", "int32", "int64", "int8", "uint8"]),
    )
    floats = st.builds(
        lambda v, d: {"op": "float", "value": v, "dtype": d},
        st.sampled_from([0.0, 1.0, -2.5, 1e30, 1e300, "inf", "-inf", "nan"]),
        st.sampled_from(["float32", "float32", "float16", "float64", "bfloat16"]),
    )
    leaf = st.one_of(
        st.builds(lambda n: {"op": "var", "name": n}, st.sampled_from(_NAMES)),
        ints,
        floats,
        st.builds(lambda v: {"op": "bool", "value": v}, st.booleans()),
    )

    def extend(c: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        def node(op: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
            return st.fixed_dictionaries({"op": st.just(op), **fields})

        axes = st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(_NAMES), "extent": st.integers(1, 5) | _ints},
                optional={"start": st.integers(0, 3)},
            ),
            min_size=1,
            max_size=2,
        )
        return st.one_of(
            st.builds(
                lambda op, a, b: {"op": op, "a": a, "b": b}, st.sampled_from(list(BINARY_OPS)), c, c
            ),
            st.builds(lambda op, a: {"op": op, "a": a}, st.sampled_from(list(UNARY_OPS)), c),
            node("read", tensor=st.sampled_from(_NAMES), indices=st.lists(c, max_size=3)),
            node("select", condition=c, true_value=c, false_value=c),
            node("if_then_else", condition=c, true_value=c, false_value=c),
            node("cast", dtype=st.sampled_from(DTYPES), value=c),
            node("call", fn=st.sampled_from(list(INTRINSICS)), args=st.lists(c, max_size=2)),
            st.fixed_dictionaries(
                {
                    "op": st.just("reduce"),
                    "reducer": st.sampled_from(REDUCERS),
                    "axes": axes,
                    "source": c,
                },
                optional={"identity": ints | floats, "condition": c, "init": c},
            ),
        )

    return st.recursive(leaf, extend, max_leaves=max_leaves)


_NUM_OPS = [op for op, (_, rule) in BINARY_OPS.items() if rule == "num"]
_INT_OPS = [op for op, (_, rule) in BINARY_OPS.items() if rule == "int"]
_CMP_OPS = [op for op, (_, rule) in BINARY_OPS.items() if rule == "cmp"]
_FLOAT_FNS = [f for f, i in INTRINSICS.items() if i.arg_kind == "float" and i.result == "same"]


@st.composite
def _typed(draw: st.DrawFn, dtype: str, depth: int = 0) -> dict[str, Any]:
    """A well-typed body for stage D of the base document (axes x, y; float32 C[4, 6], bias[6]).

    Most of these are accepted, so TVM's constructors and te.create_prim_func get fuzzed too.
    """
    leaf = depth >= 4 or draw(st.integers(0, 3)) == 0
    idx = lambda: draw(_typed("int32", depth + 1))  # noqa: E731
    if dtype == "bool":
        if leaf:
            return {"op": "bool", "value": draw(st.booleans())}
        kind = draw(st.sampled_from(["cmp", "logic", "not"]))
        if kind == "cmp":
            t = draw(st.sampled_from(["int32", "float32"]))
            a, b = draw(_typed(t, depth + 1)), draw(_typed(t, depth + 1))
            return {"op": draw(st.sampled_from(_CMP_OPS)), "a": a, "b": b}
        if kind == "not":
            return {"op": "not", "a": draw(_typed("bool", depth + 1))}
        a, b = draw(_typed("bool", depth + 1)), draw(_typed("bool", depth + 1))
        return {"op": draw(st.sampled_from(["and", "or"])), "a": a, "b": b}
    is_float = dtype.startswith("float") or dtype == "bfloat16"
    if leaf:
        if dtype == "int32" and draw(st.booleans()):
            return {"op": "var", "name": draw(st.sampled_from(["x", "y"]))}
        if dtype == "float32" and draw(st.booleans()):
            if draw(st.booleans()):
                return {"op": "read", "tensor": "C", "indices": [idx(), idx()]}
            return {"op": "read", "tensor": "bias", "indices": [idx()]}
        if is_float:
            v = draw(st.sampled_from([0.0, 1.0, -2.5, 1e30, "inf", "-inf", "nan"]))
            return {"op": "float", "value": v, "dtype": dtype}
        return {"op": "int", "value": draw(st.integers(-5, 100)), "dtype": dtype}
    kind = draw(st.sampled_from(["num", "int", "select", "ite", "cast", "call"]))
    if kind == "select" or kind == "ite":
        return {
            "op": "select" if kind == "select" else "if_then_else",
            "condition": draw(_typed("bool", depth + 1)),
            "true_value": draw(_typed(dtype, depth + 1)),
            "false_value": draw(_typed(dtype, depth + 1)),
        }
    if kind == "cast":
        src = draw(st.sampled_from(["int32", "int64", "float32", "float16", "bool"]))
        return {"op": "cast", "dtype": dtype, "value": draw(_typed(src, depth + 1))}
    if kind == "call" and is_float:
        fn = draw(st.sampled_from(_FLOAT_FNS))
        args = [draw(_typed(dtype, depth + 1)) for _ in range(INTRINSICS[fn].arity)]
        return {"op": "call", "fn": fn, "args": args}
    ops = _INT_OPS if kind == "int" and not is_float else _NUM_OPS
    a, b = draw(_typed(dtype, depth + 1)), draw(_typed(dtype, depth + 1))
    return {"op": draw(st.sampled_from(ops)), "a": a, "b": b}


@FUZZ
@given(st.sampled_from(["float32", "float16", "float64", "int32", "int8", "bool"]), st.data())
def test_well_typed_bodies(dtype: str, data: st.DataObject) -> None:
    doc = base()
    doc["stages"][1]["dtype"] = dtype
    doc["stages"][1]["body"] = data.draw(_typed(dtype))
    # Keep stage C live whatever the body reads.
    doc["stages"][1]["attrs"] = {}
    doc["outputs"] = ["C", "D"]
    doc["args"] = ["A", "B", "bias", "C", "D"]
    _must_only_raise_wire_format_error(doc)


def _must_only_raise_wire_format_error(doc: Any) -> None:
    try:
        tensors = deserialize(doc)
    except WireFormatError:
        return
    assert isinstance(tensors, list)
    # Accepted: the server's next step must not fail any other way either.
    with contextlib.suppress(WireFormatError):
        Workload.from_json(doc)


def _valid_docs() -> list[dict[str, Any]]:
    docs = [base()]
    for name in ("matmul_awkward", "max_pool", "softmax", "dense_bias_relu"):
        docs.append(serialize(zoo.tensors(name), name))
    return docs


VALID = _valid_docs()


@FUZZ
@given(json_ish)
def test_random_json(doc: Any) -> None:
    _must_only_raise_wire_format_error(doc)
    try:
        text = json.dumps(doc)
    except (ValueError, TypeError):
        return
    _must_only_raise_wire_format_error(text)


@FUZZ
@given(st.sampled_from(range(len(VALID))), st.data())
def test_random_stage_bodies(which: int, data: st.DataObject) -> None:
    doc = copy.deepcopy(VALID[which])
    for st_ in doc["stages"]:
        if data.draw(st.booleans()):
            st_["body"] = data.draw(_expr_like())
    _must_only_raise_wire_format_error(doc)


def _slots(node: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key) in a document, iteratively."""
    stack = [node]
    while stack:
        cur = stack.pop()
        items = cur.items() if isinstance(cur, dict) else enumerate(cur)
        for k, v in list(items):
            out.append((cur, k))
            if isinstance(v, dict | list):
                stack.append(v)
    return out


_mutations = st.sampled_from(
    ["delete", "replace", "op", "number", "name", "dtype", "duplicate", "swap", "wrap"]
)


@FUZZ
@given(st.sampled_from(range(len(VALID))), st.lists(_mutations, min_size=1, max_size=4), st.data())
def test_mutated_valid_documents(which: int, kinds: list[str], data: st.DataObject) -> None:
    doc = copy.deepcopy(VALID[which])
    for kind in kinds:
        slots = _slots(doc, [])
        if not slots:
            break
        parent, key = slots[data.draw(st.integers(0, len(slots) - 1))]
        if kind == "delete":
            del parent[key]
        elif kind == "replace":
            parent[key] = data.draw(json_ish)
        elif kind == "op":
            parent[key] = data.draw(st.sampled_from(_OPS))
        elif kind == "number":
            parent[key] = data.draw(_ints | _floats)
        elif kind == "name":
            parent[key] = data.draw(st.sampled_from(_NAMES))
        elif kind == "dtype":
            parent[key] = data.draw(st.sampled_from([*DTYPES, "handle", "int4", "float8"]))
        elif kind == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif kind == "swap" and isinstance(parent, list) and len(parent) > 1:
            j = data.draw(st.integers(0, len(parent) - 1))
            parent[key], parent[j] = parent[j], parent[key]
        elif kind == "wrap":
            parent[key] = {
                "op": data.draw(st.sampled_from(_OPS)),
                "a": parent[key],
                "b": parent[key],
            }
    _must_only_raise_wire_format_error(doc)


@FUZZ
@given(st.binary(max_size=64) | st.text(max_size=64))
def test_random_bytes_and_text(doc: bytes | str) -> None:
    _must_only_raise_wire_format_error(doc)
