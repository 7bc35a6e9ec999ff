"""Validation of a wire document, in three passes, all before any TVM object is built.

1. ``load_json`` / ``prescan``: parse the text (size-limited, no NaN tokens, no duplicate keys)
   and walk the raw structure *iteratively* to bound its nesting depth and size. This runs before
   pydantic so that a 100 000-deep document cannot reach any recursive code.
2. ``parse``: the pydantic models check field names, types and node kinds, the stage attrs'
   allow-list and the tag vocabulary.
3. ``check``: the semantic rules, i.e. scoping (tensors, axes), topological order, operand dtypes,
   shape and byte limits, work caps (``caps.py``), attr values, output and argument lists.

Every failure is a ``WireFormatError`` whose ``path`` names the offending field, e.g.
``stages[2].body.args[0].tensor``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pydantic

from autosched import WIRE_FORMAT_VERSION
from autosched.errors import WireFormatError
from autosched.settings import Settings, get_settings
from autosched.wire import models as m
from autosched.wire.caps import WorkCounter, check_extent
from autosched.wire.ops import (
    BINARY_OPS,
    FLOAT_DTYPES,
    INDEX_DTYPES,
    INT_DTYPES,
    INT_RANGE,
    INTRINSICS,
    ITEM_BYTES,
    STAGE_ATTRS,
    UNARY_OPS,
)

# Raw JSON nesting per expression level: a node is a dict, and its children may sit in a list
# (``args``, ``indices``), so one expression level costs up to two JSON levels.
_JSON_LEVELS_PER_EXPR = 2
# JSON levels above a stage body: {} -> "stages" [] -> stage {} -> "body".
_JSON_LEVELS_ABOVE_BODY = 4
# Raw containers per expression node, generously (node dict + an args/indices/axes list + slack).
_CONTAINERS_PER_NODE = 4

_MAX_FINITE = {
    "float16": 65504.0,
    # TVM's own bfloat16 max_value is float32's, so te.max/te.min identities use it.
    "bfloat16": 3.4028234663852886e38,
    "float32": 3.4028234663852886e38,
    "float64": math.inf,
}
_MAX_ATTR_LIST = 64


# ---------------------------------------------------------------------------------------------
# Pass 1: raw JSON


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON (write non-finite floats as strings)")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def load_json(doc: str | bytes | bytearray, settings: Settings | None = None) -> Any:
    """Parse JSON text under the document size limit."""
    settings = settings or get_settings()
    size = len(doc.encode() if isinstance(doc, str) else doc)
    if size > settings.max_json_bytes:
        raise WireFormatError(
            f"document is {size} bytes, over max_json_bytes={settings.max_json_bytes}"
        )
    try:
        return json.loads(
            doc, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys
        )
    except RecursionError:
        raise WireFormatError("invalid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise WireFormatError(f"invalid JSON: {e}") from None


def _fmt_path(parts: Iterable[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def prescan(obj: Any, settings: Settings | None = None) -> None:
    """Bound depth, container count and size of a raw document, without recursion."""
    settings = settings or get_settings()
    max_depth = settings.max_expr_depth * _JSON_LEVELS_PER_EXPR + _JSON_LEVELS_ABOVE_BODY + 4
    max_containers = settings.max_expr_nodes * _CONTAINERS_PER_NODE + 4 * settings.max_stages + 64
    containers = 0
    size = 0
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(obj, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            children: Iterable[tuple[str | int, Any]] = node.items()
        elif isinstance(node, list):
            children = enumerate(node)
        elif isinstance(node, str):
            size += len(node) + 2
            continue
        elif node is None or isinstance(node, bool | int):
            size += 5
            continue
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise WireFormatError(
                    'non-finite float: write "inf", "-inf" or "nan" as a string', _fmt_path(path)
                )
            size += 8
            continue
        else:
            raise WireFormatError(f"not a JSON value: {type(node).__name__}", _fmt_path(path))
        containers += 1
        if depth > max_depth:
            raise WireFormatError(
                f"document nested deeper than {max_depth} levels "
                f"(max_expr_depth={settings.max_expr_depth})",
                _fmt_path(path),
            )
        if containers > max_containers:
            raise WireFormatError(
                f"document has more than {max_containers} objects and arrays "
                f"(max_expr_nodes={settings.max_expr_nodes})",
                _fmt_path(path),
            )
        if size > settings.max_json_bytes:
            raise WireFormatError(f"document is over max_json_bytes={settings.max_json_bytes}")
        for k, v in children:
            if isinstance(node, dict):
                if not isinstance(k, str):
                    raise WireFormatError(f"object key is not a string: {k!r}", _fmt_path(path))
                size += len(k) + 3
            stack.append((v, depth + 1, (*path, k)))


# ---------------------------------------------------------------------------------------------
# Pass 2: models


def _loc_to_path(raw: Any, loc: tuple[str | int, ...], missing: bool = False) -> str:
    """Turn a pydantic error location into a document path.

    Pydantic puts union tags (``"add"``, ``"TensorRefs"``, ``"function-after[...]"``) into
    ``loc``; walking the raw document along ``loc`` and keeping only the steps that really exist
    there drops them. For a missing field the last step does not exist yet but names the field.
    """
    parts: list[str | int] = []
    cur = raw
    for n, step in enumerate(loc):
        in_dict = isinstance(cur, dict) and isinstance(step, str) and step in cur
        in_list = isinstance(cur, list) and isinstance(step, int) and 0 <= step < len(cur)
        if in_dict or in_list:
            parts.append(step)
            cur = cur[step]  # type: ignore[index]
        elif missing and n == len(loc) - 1 and isinstance(step, str):
            parts.append(step)
        # otherwise: a union tag or a pydantic-internal step; skip it.
    return _fmt_path(parts)


def validation_error(raw: Any, err: pydantic.ValidationError) -> WireFormatError:
    """The first problem, as a ``WireFormatError``; a union's alternatives for the same field are
    merged (``Input should be a valid number; Input should be 'inf', '-inf' or 'nan'``)."""
    errors = err.errors(include_url=False)
    paths = [_loc_to_path(raw, tuple(e["loc"]), missing=e["type"] == "missing") for e in errors]
    msgs: list[str] = []
    for e, p in zip(errors, paths, strict=True):
        if p != paths[0]:
            continue
        msg = e["msg"]
        if e["type"] == "extra_forbidden" and len(e["loc"]) >= 2 and e["loc"][-2] == "attrs":
            msg = _attr_refused(e["loc"][-1])
        elif e["type"] in ("extra_forbidden", "missing") and e["loc"]:
            msg = f"{msg} ({e['loc'][-1]!r})"
        if msg not in msgs:
            msgs.append(msg)
    others = sum(p != paths[0] for p in paths)
    msg = "; ".join(msgs[:4])
    if others:
        msg += f" (and {others} more problem{'s' if others > 1 else ''})"
    return WireFormatError(msg, paths[0])


def _attr_refused(key: Any) -> str:
    # Say why, not only what: a client that sent schedule_rule or a pragma needs to know the
    # server does not take arbitrary annotations at all.
    shown = repr(key) if len(str(key)) <= 64 else repr(str(key)[:64]) + "..."
    return (
        f"stage attr {shown} is not accepted; allowed attrs: {', '.join(STAGE_ATTRS)} "
        "(attrs become annotations in the built code, so only keys with a known, harmless "
        "meaning are taken)"
    )


def parse(raw: Any) -> m.ComputeDAG:
    """Check the document against the models (after ``prescan``)."""
    if not isinstance(raw, dict):
        raise WireFormatError(f"document must be a JSON object, not {type(raw).__name__}")
    version = raw.get("format_version")
    if version != WIRE_FORMAT_VERSION or isinstance(version, bool):
        raise WireFormatError(
            f"unsupported format_version {version!r}; this server reads version "
            f"{WIRE_FORMAT_VERSION}",
            "format_version",
        )
    try:
        return m.ComputeDAG.model_validate(raw)
    except pydantic.ValidationError as e:
        raise validation_error(raw, e) from None
    except RecursionError:  # cannot happen after prescan; belt and braces
        raise WireFormatError("document nested too deeply") from None


# ---------------------------------------------------------------------------------------------
# Pass 3: semantics


def _bytes_str(n: int) -> str:
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


@dataclass
class _TensorInfo:
    kind: str  # "placeholder" or "stage"
    index: int  # position in placeholders / stages
    shape: list[int]
    dtype: str


@dataclass
class _Scope:
    stage: int
    stage_name: str
    axes: dict[str, str]  # spatial axis -> dtype
    reduce_axes: dict[str, str] = field(default_factory=dict)  # in scope now
    declared_reduce: set[str] = field(default_factory=set)  # of this stage, in scope or not


class _Checker:
    def __init__(self, dag: m.ComputeDAG, settings: Settings) -> None:
        self.dag = dag
        self.s = settings
        self.tensors: dict[str, _TensorInfo] = {}
        self.axis_owner: dict[str, str] = {}  # axis name -> a stage using it (for messages)
        self.nodes = 0
        self.reads: list[set[str]] = []  # per stage: tensors read

    # -- tensors ------------------------------------------------------------------------------

    def tensor_shape(self, path: str, name: str, shape: list[int], dtype: str, idx: str) -> int:
        if len(shape) > self.s.max_rank:
            raise WireFormatError(
                f"tensor {name!r} has rank {len(shape)}, over max_rank={self.s.max_rank}",
                f"{path}.shape",
            )
        _, hi = INT_RANGE[idx]
        numel = math.prod(shape)
        for i, d in enumerate(shape):
            if d > hi:
                raise WireFormatError(
                    f"tensor {name!r}: dimension {d} does not fit index_dtype {idx}",
                    f"{path}.shape[{i}]",
                )
            check_extent(d, f"tensor {name!r} dimension {i}", f"{path}.shape[{i}]", self.s)
        nbytes = numel * ITEM_BYTES[dtype]
        if nbytes > self.s.max_tensor_bytes:
            raise WireFormatError(
                f"tensor {name!r} needs {_bytes_str(nbytes)} ({shape} {dtype}), over "
                f"max_tensor_bytes={_bytes_str(self.s.max_tensor_bytes)}",
                f"{path}.shape",
            )
        if numel > hi:
            raise WireFormatError(
                f"tensor {name!r} has {numel} elements, too many for index_dtype {idx}; "
                "use index_dtype int64",
                f"{path}.shape",
            )
        return nbytes

    def define(self, path: str, name: str, info: _TensorInfo) -> None:
        if name in self.tensors:
            prev = self.tensors[name]
            raise WireFormatError(
                f"duplicate tensor name {name!r} (also {prev.kind}s[{prev.index}])", f"{path}.name"
            )
        self.tensors[name] = info

    # -- expressions --------------------------------------------------------------------------

    def expr(self, e: m.Expr, path: str, sc: _Scope, depth: int, top: bool = False) -> str:
        self.nodes += 1
        if self.nodes > self.s.max_expr_nodes:
            raise WireFormatError(
                f"more than max_expr_nodes={self.s.max_expr_nodes} expression nodes", path
            )
        if depth > self.s.max_expr_depth:
            raise WireFormatError(
                f"expression deeper than max_expr_depth={self.s.max_expr_depth}", path
            )
        d = depth + 1
        if isinstance(e, m.IntConst):
            lo, hi = INT_RANGE[e.dtype]
            if not lo <= e.value <= hi:
                raise WireFormatError(f"{e.value} does not fit {e.dtype}", f"{path}.value")
            return e.dtype
        if isinstance(e, m.FloatConst):
            if isinstance(e.value, float) and abs(e.value) > _MAX_FINITE[e.dtype]:
                raise WireFormatError(
                    f'{e.value} overflows {e.dtype} (write "inf" if you mean it)', f"{path}.value"
                )
            return e.dtype
        if isinstance(e, m.BoolConst):
            return "bool"
        if isinstance(e, m.AxisRef):
            return self.var(e.name, f"{path}.name", sc)
        if isinstance(e, m.Read):
            return self.read(e, path, sc, d)
        if isinstance(e, m.Binary):
            ta = self.expr(e.a, f"{path}.a", sc, d)
            tb = self.expr(e.b, f"{path}.b", sc, d)
            rule = BINARY_OPS[e.op][1]
            if ta != tb:
                raise WireFormatError(
                    f"operands of {e.op!r} have different dtypes {ta} and {tb} "
                    "(insert a cast: there is no implicit promotion)",
                    path,
                )
            self.operand_kind(e.op, rule, ta, path)
            self.constant_operand(e, ta, path)
            return "bool" if rule in ("cmp", "bool") else ta
        if isinstance(e, m.Unary):
            ta = self.expr(e.a, f"{path}.a", sc, d)
            self.operand_kind(e.op, UNARY_OPS[e.op][1], ta, path)
            return ta
        if isinstance(e, m.Select | m.IfThenElse):
            tc = self.expr(e.condition, f"{path}.condition", sc, d)
            if tc != "bool":
                raise WireFormatError(f"condition must be bool, not {tc}", f"{path}.condition")
            tt = self.expr(e.true_value, f"{path}.true_value", sc, d)
            tf = self.expr(e.false_value, f"{path}.false_value", sc, d)
            if tt != tf:
                raise WireFormatError(
                    f"branches of {e.op!r} have different dtypes {tt} and {tf}", path
                )
            return tt
        if isinstance(e, m.Cast):
            self.expr(e.value, f"{path}.value", sc, d)
            if (
                isinstance(e.value, m.FloatConst)
                and isinstance(e.value.value, str)
                and e.dtype not in FLOAT_DTYPES
            ):
                # TVM folds the cast at build time and fails ("Cannot convert NaN to BigInt").
                raise WireFormatError(f"cannot cast {e.value.value} to {e.dtype}", path)
            return e.dtype
        if isinstance(e, m.Call):
            return self.call(e, path, sc, d)
        if isinstance(e, m.Reduce):
            if not top:
                raise WireFormatError(
                    "reduce is only allowed as the whole body of a stage (TVM cannot nest it)",
                    path,
                )
            return self.reduce(e, path, sc, d)
        raise WireFormatError(f"unknown expression node {type(e).__name__}", path)  # unreachable

    @staticmethod
    def operand_kind(op: str, rule: str, dtype: str, path: str) -> None:
        ok = {
            "num": dtype in INT_DTYPES or dtype in FLOAT_DTYPES,
            "cmp": True,
            "int": dtype in INT_DTYPES,
            "bool": dtype == "bool",
        }[rule]
        if not ok:
            want = {"num": "a number", "int": "an integer", "bool": "bool"}[rule]
            raise WireFormatError(f"operands of {op!r} must be {want}, not {dtype}", path)

    @staticmethod
    def constant_operand(e: m.Binary, dtype: str, path: str) -> None:
        """Refuse what TVM's constant folder would refuse later, without a path: a literal zero
        divisor, a literal shift by a negative amount or by the full width or more."""
        b = e.b
        if not isinstance(b, m.IntConst | m.FloatConst) or isinstance(b.value, str):
            return
        if e.op in ("div", "mod", "floordiv", "floormod") and b.value == 0:
            raise WireFormatError(f"{e.op} by constant zero", f"{path}.b")
        if e.op in ("shift_left", "shift_right"):
            bits = 8 * ITEM_BYTES[dtype]
            if not 0 <= b.value < bits:
                raise WireFormatError(
                    f"shift of a {dtype} by {b.value} (must be 0..{bits - 1})", f"{path}.b"
                )

    def var(self, name: str, path: str, sc: _Scope) -> str:
        if name in sc.reduce_axes:
            return sc.reduce_axes[name]
        if name in sc.axes:
            return sc.axes[name]
        if name in sc.declared_reduce:
            raise WireFormatError(
                f"reduce axis {name!r} used outside its reduction (only the reduce node's "
                "source and condition may use it)",
                path,
            )
        owner = self.axis_owner.get(name)
        if owner is not None and owner != sc.stage_name:
            raise WireFormatError(
                f"axis {name!r} belongs to stage {owner!r}; stage {sc.stage_name!r} has axes "
                f"{', '.join(sc.axes) or '(none)'}",
                path,
            )
        raise WireFormatError(
            f"unknown axis {name!r} in stage {sc.stage_name!r} (axes: "
            f"{', '.join([*sc.axes, *sc.reduce_axes]) or '(none)'})",
            path,
        )

    def read(self, e: m.Read, path: str, sc: _Scope, d: int) -> str:
        info = self.tensors.get(e.tensor)
        if info is None:
            later = [s.name for s in self.dag.stages[sc.stage + 1 :]]
            if e.tensor == sc.stage_name:
                msg = f"stage {sc.stage_name!r} reads itself (a cycle)"
            elif e.tensor in later:
                msg = (
                    f"stage {sc.stage_name!r} reads stage {e.tensor!r} which is defined later "
                    "(stages must be listed in topological order; cycles are not allowed)"
                )
            else:
                msg = f"read of undefined tensor {e.tensor!r}"
            raise WireFormatError(msg, f"{path}.tensor")
        if len(e.indices) != len(info.shape):
            raise WireFormatError(
                f"tensor {e.tensor!r} has rank {len(info.shape)} but is read with "
                f"{len(e.indices)} indices",
                f"{path}.indices",
            )
        for i, ix in enumerate(e.indices):
            t = self.expr(ix, f"{path}.indices[{i}]", sc, d)
            if t not in INDEX_DTYPES:
                raise WireFormatError(
                    f"index must be int32 or int64, not {t}", f"{path}.indices[{i}]"
                )
        self.reads[sc.stage].add(e.tensor)
        return info.dtype

    def call(self, e: m.Call, path: str, sc: _Scope, d: int) -> str:
        intr = INTRINSICS[e.fn]
        if len(e.args) != intr.arity:
            raise WireFormatError(
                f"{e.fn} takes {intr.arity} argument{'s' if intr.arity > 1 else ''}, "
                f"got {len(e.args)}",
                f"{path}.args",
            )
        types = [self.expr(a, f"{path}.args[{i}]", sc, d) for i, a in enumerate(e.args)]
        for i, t in enumerate(types):
            if (intr.arg_kind == "float" and t not in FLOAT_DTYPES) or (
                intr.arg_kind == "bool" and t != "bool"
            ):
                raise WireFormatError(
                    f"{e.fn} needs a {intr.arg_kind} argument, not {t} (insert a cast)",
                    f"{path}.args[{i}]",
                )
        if len(set(types)) > 1:
            raise WireFormatError(f"arguments of {e.fn} have different dtypes {types}", path)
        return "bool" if intr.result == "bool" else types[0]

    def reduce(self, e: m.Reduce, path: str, sc: _Scope, d: int) -> str:
        if not e.axes:
            raise WireFormatError("reduce needs at least one axis", f"{path}.axes")
        idx = self.dag.stages[sc.stage].index_dtype
        _, hi = INT_RANGE[idx]
        axes: dict[str, str] = {}
        for i, ax in enumerate(e.axes):
            ap = f"{path}.axes[{i}]"
            if ax.name in sc.axes or ax.name in axes:
                raise WireFormatError(
                    f"reduce axis name {ax.name!r} is already used in stage {sc.stage_name!r}",
                    f"{ap}.name",
                )
            check_extent(ax.extent, f"reduce axis {ax.name!r}", f"{ap}.extent", self.s)
            if ax.start + ax.extent - 1 > hi:
                raise WireFormatError(
                    f"reduce axis {ax.name!r} range does not fit index_dtype {idx}", ap
                )
            axes[ax.name] = idx
        sc.declared_reduce = set(axes)
        if e.init is not None:  # init is per output element: spatial axes only
            ti = self.expr(e.init, f"{path}.init", sc, d)
        sc.reduce_axes = axes
        ts = self.expr(e.source, f"{path}.source", sc, d)
        if ts not in INT_DTYPES and ts not in FLOAT_DTYPES:
            raise WireFormatError(f"cannot {e.reducer} values of dtype {ts}", f"{path}.source")
        if e.condition is not None:
            tc = self.expr(e.condition, f"{path}.condition", sc, d)
            if tc != "bool":
                raise WireFormatError(f"condition must be bool, not {tc}", f"{path}.condition")
        sc.reduce_axes = {}
        if e.identity is not None:
            tid = self.expr(e.identity, f"{path}.identity", sc, d)
            if tid != ts:
                raise WireFormatError(
                    f"identity has dtype {tid} but the reduced values are {ts}",
                    f"{path}.identity",
                )
        if e.init is not None and ti != ts:
            raise WireFormatError(
                f"init has dtype {ti} but the reduced values are {ts}", f"{path}.init"
            )
        return ts

    # -- attributes ---------------------------------------------------------------------------

    def attrs(self, stage: m.Stage, path: str) -> None:
        """The allow-listed attrs' values (the models already refused every other key)."""
        refs = stage.attrs.layout_free_placeholders
        if refs is None:
            return
        ap = f"{path}.attrs.layout_free_placeholders"
        if len(refs.tensors) > _MAX_ATTR_LIST:
            raise WireFormatError(f"more than {_MAX_ATTR_LIST} tensors", f"{ap}.tensors")
        seen: set[str] = set()
        for i, t in enumerate(refs.tensors):
            info = self.tensors.get(t)
            if info is None or info.kind != "placeholder":
                raise WireFormatError(
                    f"layout_free_placeholders names {t!r}, which is not a placeholder",
                    f"{ap}.tensors[{i}]",
                )
            if t in seen:
                raise WireFormatError(f"{t!r} listed twice", f"{ap}.tensors[{i}]")
            seen.add(t)

    # -- the whole DAG --------------------------------------------------------------------------

    def run(self) -> None:
        dag, s = self.dag, self.s
        if len(dag.stages) > s.max_stages:
            raise WireFormatError(
                f"{len(dag.stages)} stages, over max_stages={s.max_stages}", "stages"
            )
        if len(dag.placeholders) > s.max_stages:
            raise WireFormatError(
                f"{len(dag.placeholders)} placeholders, over max_stages={s.max_stages}",
                "placeholders",
            )
        total = 0
        work = WorkCounter(s)
        for i, p in enumerate(dag.placeholders):
            path = f"placeholders[{i}]"
            self.define(path, p.name, _TensorInfo("placeholder", i, p.shape, p.dtype))
            total += self.tensor_shape(path, p.name, p.shape, p.dtype, p.index_dtype)
        for st in dag.stages:
            for ax in st.axes:
                self.axis_owner.setdefault(ax, st.name)
        for i, st in enumerate(dag.stages):
            path = f"stages[{i}]"
            if st.name in self.tensors:  # report a duplicate name before anything else
                self.define(path, st.name, _TensorInfo("stage", i, st.shape, st.dtype))
            total += self.tensor_shape(path, st.name, st.shape, st.dtype, st.index_dtype)
            if total > s.max_total_bytes:
                raise WireFormatError(
                    f"tensors up to {st.name!r} need {_bytes_str(total)}, over "
                    f"max_total_bytes={_bytes_str(s.max_total_bytes)}",
                    f"{path}.shape",
                )
            if len(st.axes) != len(st.shape):
                raise WireFormatError(
                    f"stage {st.name!r} has {len(st.shape)} dimensions but {len(st.axes)} axes",
                    f"{path}.axes",
                )
            axes: dict[str, str] = {}
            for j, ax in enumerate(st.axes):
                if ax in axes:
                    raise WireFormatError(
                        f"duplicate axis name {ax!r} in stage {st.name!r}", f"{path}.axes[{j}]"
                    )
                axes[ax] = st.index_dtype
            self.reads.append(set())
            sc = _Scope(i, st.name, axes)
            body_t = self.expr(st.body, f"{path}.body", sc, 1, top=True)
            if body_t != st.dtype:
                raise WireFormatError(
                    f"stage {st.name!r} declares dtype {st.dtype} but its body is {body_t}",
                    f"{path}.dtype",
                )
            self.attrs(st, path)
            if isinstance(st.body, m.Reduce):
                reduce_extents = [ax.extent for ax in st.body.axes]
                work.add_stage(st.name, st.shape, reduce_extents, f"{path}.body.axes")
            else:
                work.add_stage(st.name, st.shape, [], f"{path}.shape")
            # Defined only now: a stage must not read itself.
            self.define(path, st.name, _TensorInfo("stage", i, st.shape, st.dtype))
        if total > s.max_total_bytes:
            raise WireFormatError(
                f"all tensors need {_bytes_str(total)}, over "
                f"max_total_bytes={_bytes_str(s.max_total_bytes)}"
            )
        self.outputs_and_args()

    def outputs_and_args(self) -> None:
        dag = self.dag
        outputs: set[str] = set()
        for i, o in enumerate(dag.outputs):
            info = self.tensors.get(o)
            if info is None:
                raise WireFormatError(f"output {o!r} is not a defined tensor", f"outputs[{i}]")
            if info.kind != "stage":
                raise WireFormatError(
                    f"output {o!r} is a placeholder; outputs must be stages", f"outputs[{i}]"
                )
            if o in outputs:
                raise WireFormatError(f"output {o!r} listed twice", f"outputs[{i}]")
            outputs.add(o)
        seen: set[str] = set()
        for i, a in enumerate(dag.args):
            info = self.tensors.get(a)
            if info is None:
                raise WireFormatError(f"argument {a!r} is not a defined tensor", f"args[{i}]")
            if a in seen:
                raise WireFormatError(f"argument {a!r} listed twice", f"args[{i}]")
            if info.kind == "stage" and a not in outputs:
                raise WireFormatError(
                    f"argument {a!r} is a stage but not listed in outputs", f"args[{i}]"
                )
            seen.add(a)
        for i, p in enumerate(dag.placeholders):
            if p.name not in seen:
                raise WireFormatError(
                    f"placeholder {p.name!r} is missing from args (every placeholder is a "
                    "parameter of the function)",
                    f"placeholders[{i}]",
                )
        for o in dag.outputs:
            if o not in seen:
                raise WireFormatError(f"output {o!r} is missing from args", "args")
        # Every stage must feed an output: create_prim_func would silently drop the others, and
        # then two documents that differ only in dead code would describe one workload.
        live = set(outputs)
        for i in range(len(dag.stages) - 1, -1, -1):
            if dag.stages[i].name in live:
                live |= self.reads[i]
        for i, st in enumerate(dag.stages):
            if st.name not in live:
                raise WireFormatError(
                    f"stage {st.name!r} is not used by any output", f"stages[{i}].name"
                )


def check(dag: m.ComputeDAG, settings: Settings | None = None) -> None:
    """The semantic rules; see the module docstring."""
    _Checker(dag, settings or get_settings()).run()


def validate_document(
    doc: m.ComputeDAG | dict[str, Any] | str | bytes | bytearray, settings: Settings | None = None
) -> m.ComputeDAG:
    """All three passes: raw text or object in, a checked ``ComputeDAG`` out."""
    settings = settings or get_settings()
    if isinstance(doc, m.ComputeDAG):
        dag = doc
    else:
        raw = load_json(doc, settings) if isinstance(doc, str | bytes | bytearray) else doc
        prescan(raw, settings)
        dag = parse(raw)
    check(dag, settings)
    return dag
