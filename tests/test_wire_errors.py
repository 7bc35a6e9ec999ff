"""Bad documents: each is refused with a WireFormatError that says where and why."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from autosched.errors import WireFormatError
from autosched.settings import get_settings
from autosched.wire import Workload, deserialize, load_workload
from tests.wire_support import F, I, R, V, base

_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def _steps(path: str) -> list[str | int]:
    return [name if name else int(idx) for name, idx in _STEP.findall(path)]


def _get(doc: Any, path: str) -> Any:
    for s in _steps(path):
        doc = doc[s]
    return doc


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def f(doc: dict[str, Any]) -> None:
        *head, last = _steps(path)
        parent = doc
        for s in head:
            parent = parent[s]
        parent[last] = copy.deepcopy(value)

    return f


def _del(path: str) -> Callable[[dict[str, Any]], None]:
    def f(doc: dict[str, Any]) -> None:
        *head, last = _steps(path)
        parent = doc
        for s in head:
            parent = parent[s]
        del parent[last]

    return f


def _seq(*fs: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def f(doc: dict[str, Any]) -> None:
        for g in fs:
            g(doc)

    return f


def _wrap(path: str, make: Callable[[Any], Any]) -> Callable[[dict[str, Any]], None]:
    def f(doc: dict[str, Any]) -> None:
        _set(path, make(_get(doc, path)))(doc)

    return f


def _deep_add(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = R("C", V("x"), V("y"))
    for _ in range(depth):
        node = {"op": "add", "a": node, "b": F(1.0)}
    return node


def _wide_add(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = F(1.0)
    for _ in range(levels):  # a balanced tree: 2**levels leaves, no deeper than `levels`
        node = {"op": "add", "a": node, "b": node}
    return node


def _big_placeholders(doc: dict[str, Any]) -> None:
    # Six 3 GiB inputs: each under max_tensor_bytes (4 GiB), together over max_total (16 GiB).
    for n in range(6):
        doc["placeholders"].append(
            {"name": f"big{n}", "shape": [768, 1024, 1024], "dtype": "float32"}
        )
        doc["args"].insert(0, f"big{n}")


def _many_stages(doc: dict[str, Any]) -> None:
    st = doc["stages"][1]
    for n in range(get_settings().max_stages + 1):
        doc["stages"].append({**copy.deepcopy(st), "name": f"S{n}"})


# (id, mutation, expected path, regex the message must match)
CASES: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    # -- shape of the document (pydantic) ---------------------------------------------------
    (
        "unknown_node_kind",
        _set("stages[1].body.b", {"op": "frobnicate"}),
        "stages[1].body.b",
        "frobnicate",
    ),
    ("node_without_op", _set("stages[1].body.b", {"value": 1.0}), "stages[1].body.b", "op"),
    ("unknown_field", _set("stages[0].colour", "red"), "stages[0].colour", "Extra inputs"),
    ("missing_field", _del("stages[0].shape"), "stages[0].shape", "Field required"),
    ("missing_body", _del("stages[1].body"), "stages[1].body", "Field required"),
    (
        "dtype_not_whitelisted",
        _set("placeholders[0].dtype", "handle"),
        "placeholders[0].dtype",
        "float32",
    ),
    ("dtype_float8", _set("stages[0].dtype", "float8_e4m3"), "stages[0].dtype", "Input should be"),
    (
        "cast_dtype_not_whitelisted",
        _wrap("stages[1].body", lambda b: {"op": "cast", "dtype": "int4", "value": b}),
        "stages[1].body.dtype",
        "Input should be",
    ),
    (
        "zero_dim",
        _set("placeholders[0].shape[1]", 0),
        "placeholders[0].shape[1]",
        "greater than or equal to 1",
    ),
    ("negative_dim", _set("stages[0].shape[0]", -4), "stages[0].shape[0]", "greater than or equal"),
    ("bool_as_dim", _set("placeholders[1].shape[0]", True), "placeholders[1].shape[0]", "integer"),
    ("string_as_dim", _set("placeholders[1].shape[0]", "8"), "placeholders[1].shape[0]", "integer"),
    ("float_dim", _set("placeholders[1].shape[0]", 8.0), "placeholders[1].shape[0]", "integer"),
    ("bad_name", _set("placeholders[0].name", "A; rm -rf /"), "placeholders[0].name", "pattern"),
    ("reducer_prod", _set("stages[0].body.reducer", "prod"), "stages[0].body.reducer", "sum"),
    (
        "unknown_intrinsic",
        _set("stages[1].body.b", {"op": "call", "fn": "system", "args": []}),
        "stages[1].body.b.fn",
        "exp",
    ),
    ("bad_float_string", _set("stages[1].body.b", F("infinity")), "stages[1].body.b.value", "inf"),
    (
        "reduce_extent_zero",
        _set("stages[0].body.axes[0].extent", 0),
        "stages[0].body.axes[0].extent",
        "greater",
    ),
    ("format_version", _set("format_version", 2), "format_version", "unsupported format_version 2"),
    (
        "format_version_missing",
        _del("format_version"),
        "format_version",
        "unsupported format_version None",
    ),
    ("outputs_empty", _set("outputs", []), "outputs", "at least 1"),
    # -- scoping ---------------------------------------------------------------------------
    (
        "undefined_tensor",
        _set("stages[0].body.source.a.tensor", "Q"),
        "stages[0].body.source.a.tensor",
        "undefined tensor 'Q'",
    ),
    (
        "forward_reference",
        _set("stages[0].body.source.b", R("D", V("k"), V("j"))),
        "stages[0].body.source.b.tensor",
        "defined later",
    ),
    (
        "self_reference",
        _set("stages[1].body.b", R("D", V("x"), V("y"))),
        "stages[1].body.b.tensor",
        "reads itself",
    ),
    (
        "axis_of_other_stage",
        _set("stages[1].body.a.b.indices[0]", V("j")),
        "stages[1].body.a.b.indices[0].name",
        "belongs to stage 'C'",
    ),
    (
        "unknown_axis",
        _set("stages[1].body.a.b.indices[0]", V("zz")),
        "stages[1].body.a.b.indices[0].name",
        "unknown axis 'zz'",
    ),
    (
        "reduce_axis_outside_reduction",
        _set("stages[0].body.init", R("A", V("i"), V("k"))),
        "stages[0].body.init.indices[1].name",
        "outside its reduction",
    ),
    (
        "wrong_index_count",
        _set("stages[0].body.source.a.indices", [V("i")]),
        "stages[0].body.source.a.indices",
        "rank 2 but is read with 1",
    ),
    (
        "float_index",
        _set("stages[1].body.a.b.indices[0]", F(1.0)),
        "stages[1].body.a.b.indices[0]",
        "int32 or int64",
    ),
    (
        "duplicate_tensor_name",
        _set("placeholders[1].name", "A"),
        "placeholders[1].name",
        "duplicate tensor name 'A'",
    ),
    (
        "stage_named_like_placeholder",
        _set("stages[0].name", "bias"),
        "stages[0].name",
        "duplicate tensor name 'bias'",
    ),
    ("duplicate_axis", _set("stages[0].axes", ["i", "i"]), "stages[0].axes[1]", "duplicate axis"),
    (
        "reduce_axis_shadows",
        _set("stages[0].body.axes[0].name", "i"),
        "stages[0].body.axes[0].name",
        "already used",
    ),
    ("axes_vs_shape", _set("stages[1].axes", ["x"]), "stages[1].axes", "2 dimensions but 1 axes"),
    # -- outputs and arguments --------------------------------------------------------------
    ("output_unknown", _set("outputs", ["Z"]), "outputs[0]", "not a defined tensor"),
    ("output_placeholder", _set("outputs", ["A", "D"]), "outputs[0]", "placeholder"),
    ("arg_unknown", _set("args[1]", "Z"), "args[1]", "not a defined tensor"),
    ("arg_twice", _set("args", ["A", "B", "bias", "D", "A"]), "args[4]", "twice"),
    ("placeholder_not_arg", _set("args", ["A", "B", "D"]), "placeholders[2]", "missing from args"),
    ("output_not_arg", _set("args", ["A", "B", "bias"]), "args", "output 'D' is missing"),
    (
        "stage_arg_not_output",
        _set("args", ["A", "B", "bias", "C", "D"]),
        "args[3]",
        "not listed in outputs",
    ),
    ("dead_stage", _set("stages[1].body.a.a", F(1.0)), "stages[0].name", "not used by any output"),
    # -- types -----------------------------------------------------------------------------
    ("operand_dtypes", _set("stages[1].body.b", I(0)), "stages[1].body", "float32 and int32"),
    ("body_dtype", _set("stages[1].dtype", "float16"), "stages[1].dtype", "declares dtype float16"),
    (
        "comparison_as_value",
        _set("stages[1].body", {"op": "gt", "a": R("C", V("x"), V("y")), "b": F(0.0)}),
        "stages[1].dtype",
        "body is bool",
    ),
    (
        "select_condition",
        _set(
            "stages[1].body",
            {"op": "select", "condition": F(1.0), "true_value": F(1.0), "false_value": F(2.0)},
        ),
        "stages[1].body.condition",
        "must be bool",
    ),
    (
        "and_on_floats",
        _set("stages[1].body", {"op": "and", "a": F(1.0), "b": F(2.0)}),
        "stages[1].body",
        "must be bool",
    ),
    (
        "call_arity",
        _set("stages[1].body.b", {"op": "call", "fn": "exp", "args": [F(1.0), F(2.0)]}),
        "stages[1].body.b.args",
        "takes 1 argument",
    ),
    (
        "call_int_arg",
        _set("stages[1].body.b", {"op": "call", "fn": "sqrt", "args": [I(4)]}),
        "stages[1].body.b.args[0]",
        "float argument",
    ),
    (
        "int_overflow",
        _set("stages[1].body.b", {"op": "cast", "dtype": "float32", "value": I(300, "int8")}),
        "stages[1].body.b.value.value",
        "does not fit int8",
    ),
    (
        "float16_overflow",
        _set("stages[1].body.b", {"op": "cast", "dtype": "float32", "value": F(1e6, "float16")}),
        "stages[1].body.b.value.value",
        "overflows float16",
    ),
    (
        "div_by_zero",
        _set("stages[1].body.b", {"op": "floordiv", "a": F(1.0), "b": F(0.0)}),
        "stages[1].body.b.b",
        "floordiv by constant zero",
    ),
    (
        "shift_too_far",
        _set("stages[1].body.a.b.indices[0]", {"op": "shift_left", "a": V("y"), "b": I(32)}),
        "stages[1].body.a.b.indices[0].b",
        "must be 0..31",
    ),
    (
        "cast_inf_to_int",
        _set("stages[1].body.a.b.indices[0]", {"op": "cast", "dtype": "int32", "value": F("inf")}),
        "stages[1].body.a.b.indices[0]",
        "cannot cast inf to int32",
    ),
    (
        "identity_dtype",
        _set("stages[0].body.identity", I(0)),
        "stages[0].body.identity",
        "identity has dtype int32",
    ),
    (
        "init_dtype",
        _set("stages[0].body.init", F(0.0, "float64")),
        "stages[0].body.init",
        "init has dtype float64",
    ),
    (
        "reduce_bool",
        _set("stages[0].body.source", {"op": "bool", "value": True}),
        "stages[0].body.source",
        "cannot sum values of dtype bool",
    ),
    ("reduce_no_axes", _set("stages[0].body.axes", []), "stages[0].body.axes", "at least one axis"),
    (
        "reduce_not_at_top",
        _set(
            "stages[1].body.b",
            {
                "op": "reduce",
                "reducer": "sum",
                "axes": [{"name": "r", "extent": 2}],
                "source": F(1.0),
            },
        ),
        "stages[1].body.b",
        "whole body",
    ),
    (
        "reduce_range_overflow",
        _set("stages[0].body.axes[0].start", 2**31 - 2),
        "stages[0].body.axes[0]",
        "does not fit index_dtype",
    ),
    # -- attributes ------------------------------------------------------------------------
    (
        "layout_free_stage",
        _set("stages[1].attrs", {"layout_free_placeholders": {"tensors": ["C"]}}),
        "stages[1].attrs.layout_free_placeholders.tensors[0]",
        "not a placeholder",
    ),
    (
        "layout_free_twice",
        _set("stages[0].attrs", {"layout_free_placeholders": {"tensors": ["B", "B"]}}),
        "stages[0].attrs.layout_free_placeholders.tensors[1]",
        "listed twice",
    ),
    (
        "layout_free_not_tensors",
        _set("stages[0].attrs", {"layout_free_placeholders": ["B"]}),
        "stages[0].attrs.layout_free_placeholders",
        "valid dictionary",
    ),
    # Only allow-listed keys: everything else, whatever its value, is refused by name.
    (
        "tensor_attr_other_key",
        _set("stages[1].attrs", {"weights": {"tensors": ["A"]}}),
        "stages[1].attrs.weights",
        "'weights' is not accepted; allowed attrs: layout_free_placeholders",
    ),
    (
        "attr_nested",
        _set("stages[1].attrs", {"x": {"y": 1}}),
        "stages[1].attrs.x",
        "allowed attrs: layout_free_placeholders",
    ),
    (
        "attr_int",
        _set("stages[1].attrs", {"n": 2**70}),
        "stages[1].attrs.n",
        "'n' is not accepted",
    ),
    (
        "attr_schedule_rule",
        _set("stages[0].attrs", {"schedule_rule": "meta_schedule.pool_max"}),
        "stages[0].attrs.schedule_rule",
        "'schedule_rule' is not accepted",
    ),
    (
        "attr_pragma_after_allowed",
        _set(
            "stages[0].attrs",
            {"layout_free_placeholders": {"tensors": ["B"]}, "pragma_import_c": "int x;"},
        ),
        "stages[0].attrs.pragma_import_c",
        "'pragma_import_c' is not accepted",
    ),
    (
        "attr_long_key",
        _set("stages[0].attrs", {"k" * 5000: 1}),
        "stages[0].attrs",
        r"'k{64}'\.\.\. is not accepted",
    ),
    ("tag_free_text", _set("stages[0].tag", "<script>"), "stages[0].tag", "'elemwise'"),
    ("tag_not_str", _set("stages[0].tag", 1), "stages[0].tag", "'dense'"),
    # -- work caps -------------------------------------------------------------------------
    (
        "reduce_extent_2_52",
        _seq(
            _set("stages[0].body.axes[0].extent", 2**52),
            _set("stages[0].index_dtype", "int64"),
        ),
        "stages[0].body.axes[0].extent",
        r"4503599627370496 \(2\^52\), over max_axis_extent=1073741824 \(2\^30\)",
    ),
    (
        "placeholder_dim_over_cap",
        _seq(
            _set("placeholders[2].shape", [2**31]),
            _set("placeholders[2].index_dtype", "int64"),
            _set("placeholders[2].dtype", "bool"),
        ),
        "placeholders[2].shape[0]",
        "over max_axis_extent",
    ),
    (
        "stage_iterations",
        _seq(
            _set("stages[0].body.axes", [{"name": "k", "extent": 2**29}] * 1),
            _set("stages[0].shape", [2**10, 2**6]),
            _set("stages[1].shape", [2**10, 2**6]),
            _set("placeholders[0].shape", [2**10, 8]),
            _set("placeholders[1].shape", [8, 2**6]),
            _set("placeholders[2].shape", [2**6]),
            _set("stages[0].body.source.a.indices[1]", I(0)),
            _set("stages[0].body.source.b.indices[0]", I(0)),
        ),
        "stages[0].body.axes",
        r"stage 'C' runs .* \(2\^45\) iterations \(shape \[1024, 64\] x reduce extents "
        r"\[536870912\]\), over max_stage_iterations",
    ),
    # -- limits ----------------------------------------------------------------------------
    (
        "rank_over_limit",
        _set("placeholders[2].shape", [1] * 9),
        "placeholders[2].shape",
        "rank 9, over max_rank=8",
    ),
    (
        "dim_over_int32",
        _set("placeholders[2].shape", [2**31]),
        "placeholders[2].shape[0]",
        "does not fit index_dtype int32",
    ),
    (
        "intermediate_4TiB",
        _seq(_set("stages[0].shape", [2**20, 2**20]), _set("stages[1].shape", [2**20, 2**20])),
        "stages[0].shape",
        r"4\.0 TiB.*max_tensor_bytes",
    ),
    (
        "intermediate_4TiB_int64",
        _seq(_set("stages[0].shape", [2**20, 2**20]), _set("stages[0].index_dtype", "int64")),
        "stages[0].shape",
        r"4\.0 TiB",
    ),
    (
        "numel_over_int32",
        _seq(_set("placeholders[2].shape", [2**16, 2**15]), _set("placeholders[2].dtype", "bool")),
        "placeholders[2].shape",
        "use index_dtype int64",
    ),
    ("total_bytes", _big_placeholders, "stages[0].shape", "max_total_bytes"),
    (
        "expr_depth",
        _set("stages[1].body", _deep_add(70)),
        "stages[1].body" + ".a" * 63,
        "max_expr_depth=64",
    ),
    ("expr_nodes", _set("stages[1].body", _wide_add(15)), "stages[1].body", "max_expr_nodes=20000"),
    ("too_many_stages", _many_stages, "stages", "over max_stages=256"),
]


@pytest.mark.parametrize(
    ("mutate", "path", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_document(mutate: Callable[[dict[str, Any]], None], path: str, pattern: str) -> None:
    doc = base()
    mutate(doc)
    with pytest.raises(WireFormatError) as info:
        deserialize(doc)
    err = info.value
    assert err.path.startswith(path), (err.path, err.message)
    assert re.search(pattern, err.message), err.message
    assert str(err).startswith(f"{err.path}: ") or not err.path
    # Same verdict from text, and from the Workload constructor.
    with pytest.raises(WireFormatError) as again:
        Workload.from_json(json.dumps(doc))
    assert again.value.path == err.path


def test_base_document_is_valid() -> None:
    tensors = deserialize(base())
    assert [t.name for t in tensors] == ["A", "B", "bias", "D"]
    assert Workload.from_json(base()).name == "mm_relu"


# -- documents that are not even JSON objects ----------------------------------------------


@pytest.mark.parametrize(
    ("doc", "pattern"),
    [
        ("{", "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("null", "must be a JSON object"),
        ('{"format_version": 1, "format_version": 1}', "duplicate key"),
        ('{"format_version": NaN}', "NaN is not valid JSON"),
        ('{"format_version": Infinity}', "Infinity is not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "nested"),
        ('{"a": ' * 50_000 + "1" + "}" * 50_000, "nested"),
        ("1" * 5000, "invalid JSON"),  # over Python's int-digits limit
        (" " * (4 * 1024**2 + 1), "over max_json_bytes"),
    ],
    ids=[
        "truncated",
        "not_utf8",
        "array",
        "null",
        "duplicate_key",
        "nan_token",
        "infinity_token",
        "deep_arrays",
        "deep_objects",
        "huge_int",
        "too_big",
    ],
)
def test_bad_text(doc: str | bytes, pattern: str) -> None:
    with pytest.raises(WireFormatError, match=pattern):
        deserialize(doc)


def test_deep_python_object_is_refused_without_recursion() -> None:
    # A client library might hand us an already-parsed object nested far past the recursion limit.
    deep: Any = F(1.0)
    for _ in range(200_000):
        deep = {"op": "add", "a": deep, "b": F(1.0)}
    doc = base()
    doc["stages"][1]["body"] = deep
    with pytest.raises(WireFormatError, match="nested deeper") as info:
        deserialize(doc)
    assert info.value.path.startswith("stages[1].body.a.a")


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        ({1, 2}, "not a JSON value: set"),
        (float("nan"), "non-finite"),
        (b"x", "not a JSON value"),
        ({1: 2}, "key is not a string"),
        ((1.0,), "not a JSON value: tuple"),
    ],
)
def test_non_json_python_values(value: Any, pattern: str) -> None:
    doc = base()
    doc["stages"][1]["body"]["b"]["value"] = value
    with pytest.raises(WireFormatError, match=pattern) as info:
        deserialize(doc)
    assert info.value.path == "stages[1].body.b.value"


def test_limits_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOSCHED_MAX_STAGES", "1")
    get_settings.cache_clear()
    try:
        with pytest.raises(WireFormatError, match="2 stages, over max_stages=1"):
            deserialize(base())
        monkeypatch.delenv("AUTOSCHED_MAX_STAGES")
        monkeypatch.setenv("AUTOSCHED_MAX_TENSOR_BYTES", "64")
        get_settings.cache_clear()
        with pytest.raises(WireFormatError, match=r"128 B.*max_tensor_bytes=64 B") as info:
            deserialize(base())
        assert info.value.path == "placeholders[0].shape"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    deserialize(base())


def test_load_workload_errors(tmp_path: Any) -> None:
    with pytest.raises(WireFormatError, match="cannot read"):
        load_workload(tmp_path / "missing.json")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (get_settings().max_json_bytes + 10))
    with pytest.raises(WireFormatError, match="over max_json_bytes"):
        load_workload(big)
    bad = tmp_path / "bad.json"
    doc = base()
    doc["stages"][0]["body"]["source"]["a"]["tensor"] = "Q"
    bad.write_text(json.dumps(doc))
    with pytest.raises(WireFormatError) as info:
        load_workload(bad)
    assert info.value.path == "stages[0].body.source.a.tensor"
