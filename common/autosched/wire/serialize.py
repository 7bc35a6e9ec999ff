"""te tensors -> wire document.

Walks the real te graph (``PlaceholderOp`` / ``ComputeOp``) and their expression trees. Anything
the format cannot say (extern/scan ops, multi-output computes, symbolic shapes, custom
reducers, unknown intrinsics) raises ``SerializeError`` naming the stage.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import tvm_ffi
from tvm import ir, te, tirx

from autosched import WIRE_FORMAT_VERSION
from autosched.errors import SerializeError
from autosched.settings import get_settings
from autosched.wire.ops import (
    BINARY_OPS,
    IF_THEN_ELSE_OP,
    INTRINSIC_BY_OP,
    INTRINSICS,
    STAGE_ATTRS,
    TENSOR_LOAD_OP,
    TOPI_TAGS,
    UNARY_OPS,
)

# TVM node class -> wire op, from the same tables the deserializer uses.
_BINARY_BY_CLASS = {getattr(tirx, cls): op for op, (cls, _) in BINARY_OPS.items()}
_UNARY_BY_CLASS = {getattr(tirx, cls): op for op, (cls, _) in UNARY_OPS.items()}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_NAME = 64


def _dtype(e: Any) -> str:
    return str(e.ty.dtype)


class _NameSupply:
    """Makes names valid and unique the way ``te.create_prim_func`` names its blocks
    (``compute``, ``compute_1``, ...), so block names survive a round trip."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def fresh(self, name: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_]", "_", str(name))[: _MAX_NAME - 6] or "t"
        if not _NAME_RE.match(base):
            base = f"t_{base}"[: _MAX_NAME - 6]
        out, i = base, 0
        while out in self.used:
            i += 1
            out = f"{base}_{i}"
        self.used.add(out)
        return out


def _const_value(e: Any) -> Any:
    value = float(e.value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


class _Serializer:
    def __init__(self) -> None:
        self.names: dict[Any, str] = {}  # te Operation -> wire tensor name
        self.tensor_names = _NameSupply()
        self.max_depth = get_settings().max_expr_depth
        self.where = ""

    def fail(self, msg: str) -> SerializeError:
        return SerializeError(f"{self.where}: {msg}" if self.where else msg)

    # -- graph ----------------------------------------------------------------------------------

    def topo_order(self, args: list[te.Tensor]) -> list[Any]:
        """Post-order DFS from the arguments, inputs in order: producers before consumers."""
        order: list[Any] = []
        state: dict[Any, int] = {}  # 1: on the stack, 2: done
        for t in args:
            if state.get(t.op) == 2:
                continue
            stack = [(t.op, iter(list(t.op.input_tensors)))]
            state[t.op] = 1
            while stack:
                op, inputs = stack[-1]
                nxt = next(inputs, None)
                if nxt is None:
                    stack.pop()
                    state[op] = 2
                    order.append(op)
                elif nxt.op not in state:
                    state[nxt.op] = 1
                    stack.append((nxt.op, iter(list(nxt.op.input_tensors))))
                elif state[nxt.op] == 1:
                    raise self.fail(f"cycle through {nxt.op.name!r}")
        return order

    def shape(self, op: Any, shape: Sequence[Any]) -> tuple[list[int], str]:
        dims, dtypes = [], set()
        for d in shape:
            if not isinstance(d, tirx.IntImm):
                raise self.fail(f"symbolic dimension {d} (only static shapes are supported)")
            dims.append(int(d.value))
            dtypes.add(_dtype(d))
        if len(dtypes) > 1:
            raise self.fail(f"shape mixes index dtypes {sorted(dtypes)}")
        idx = dtypes.pop() if dtypes else "int32"
        if idx not in ("int32", "int64"):
            raise self.fail(f"index dtype {idx} is not int32 or int64")
        return dims, idx

    def run(self, args: list[te.Tensor], name: str | None) -> dict[str, Any]:
        for i, t in enumerate(args):
            if not isinstance(t, te.Tensor):
                raise SerializeError(f"argument {i} is a {type(t).__name__}, not a te.Tensor")
            if t.op.num_outputs != 1:
                raise SerializeError(f"argument {i} ({t.op.name!r}) is a multi-output op")
        order = self.topo_order(args)
        arg_ops = [t.op for t in args]
        # Placeholders are named in argument order first: they are the function's parameters.
        for op in arg_ops:
            if isinstance(op, te.PlaceholderOp) and op not in self.names:
                self.names[op] = self.tensor_names.fresh(op.name)
        placeholders, stages = [], []
        for op in order:
            self.where = f"op {op.name!r}"
            if isinstance(op, te.PlaceholderOp):
                if op not in self.names:
                    raise self.fail(
                        "placeholder is read but missing from the argument list "
                        "(te.create_prim_func needs every input as an argument)"
                    )
                dims, idx = self.shape(op, op.shape)
                placeholders.append(
                    {
                        "name": self.names[op],
                        "shape": dims,
                        "dtype": str(op.output(0).dtype),
                        "index_dtype": idx,
                    }
                )
            elif isinstance(op, te.ComputeOp):
                self.names[op] = self.tensor_names.fresh(op.name)
                self.where = f"stage {self.names[op]!r}"
                stages.append(self.stage(op))
            else:
                raise self.fail(f"{type(op).__name__} cannot be serialized (only te.compute)")
        self.where = ""
        outputs = [self.names[op] for op in arg_ops if isinstance(op, te.ComputeOp)]
        doc: dict[str, Any] = {
            "format_version": WIRE_FORMAT_VERSION,
            "placeholders": placeholders,
            "stages": stages,
            "outputs": outputs,
            "args": [self.names[op] for op in arg_ops],
        }
        if name is not None:
            doc["name"] = name
        return doc

    # -- stages ---------------------------------------------------------------------------------

    def stage(self, op: Any) -> dict[str, Any]:
        if op.num_outputs != 1:
            raise self.fail(
                f"multi-output compute ({op.num_outputs} outputs) is not supported by the wire "
                "format; split it into one te.compute per output"
            )
        dims, idx = self.shape(op, op.output(0).shape)
        axis_names = _NameSupply()
        scope: list[tuple[Any, str]] = []  # (tirx Var, wire name)
        axes = []
        for iv in op.axis:
            if _dtype(iv.var) != idx:
                raise self.fail(f"axis {iv.var.name} is {_dtype(iv.var)}, shape is {idx}")
            n = axis_names.fresh(iv.var.name)
            scope.append((iv.var, n))
            axes.append(n)
        body = op.body[0]
        out: dict[str, Any] = {
            "name": self.names[op],
            "shape": dims,
            "dtype": _dtype(body),
            "axes": axes,
            "body": (
                self.reduce(body, scope, axis_names, idx)
                if isinstance(body, tirx.Reduce)
                else self.expr(body, scope, 1)
            ),
            "index_dtype": idx,
        }
        # The tag does not reach the PrimFunc, so one outside TOPI's vocabulary (which the server
        # refuses) is dropped rather than failing the whole declaration.
        if op.tag and str(op.tag) in TOPI_TAGS:
            out["tag"] = str(op.tag)
        attrs = {}
        for k, v in op.attrs.items() if op.attrs else ():
            key = str(k)
            if key.startswith("pragma_"):
                # A pragma changes the generated code; dropping it would change the kernel.
                raise self.fail(
                    f"attr {key!r} is a pragma, which reaches code generation; the wire format "
                    f"carries only {', '.join(STAGE_ATTRS)}"
                )
            if key in STAGE_ATTRS:
                attrs[key] = self.tensor_refs(key, v)
            # Any other key is a hint for TVM's own schedulers (MetaSchedule's schedule_rule,
            # topi's axis): it does not reach code generation and our templates ignore it.
        if attrs:
            out["attrs"] = attrs
        return out

    def tensor_refs(self, key: str, v: Any) -> dict[str, list[str]]:
        items = list(v) if isinstance(v, tvm_ffi.Array | list | tuple) else []
        if not all(isinstance(x, te.Tensor) for x in items):
            raise self.fail(f"attr {key!r} must be a list of placeholder tensors, not {v!r}")
        refs = []
        for t in items:
            if t.op not in self.names:
                raise self.fail(f"attr {key!r} names a tensor outside this DAG")
            refs.append(self.names[t.op])
        return {"tensors": refs}

    def reduce(self, r: Any, scope: list[tuple[Any, str]], names: _NameSupply, idx: str) -> Any:
        c = r.combiner
        if len(r.source) != 1 or len(c.lhs) != 1 or r.value_index != 0:
            raise self.fail("multi-value (tuple) reductions such as argmax are not supported")
        res = c.result[0]
        reducer = {tirx.Add: "sum", tirx.Max: "max", tirx.Min: "min"}.get(type(res))
        if reducer is None or not res.a.same_as(c.lhs[0]) or not res.b.same_as(c.rhs[0]):
            raise self.fail(f"unsupported reducer {c} (only sum, max and min)")
        identity = c.identity_element[0]
        if not isinstance(identity, tirx.IntImm | tirx.FloatImm):
            raise self.fail("reducer identity is not a constant")
        axes, inner = [], list(scope)
        for iv in r.axis:
            dom = iv.dom
            if not isinstance(dom.min, tirx.IntImm) or not isinstance(dom.extent, tirx.IntImm):
                raise self.fail(f"reduce axis {iv.var.name} has a symbolic range")
            if _dtype(iv.var) != idx:
                raise self.fail(
                    f"reduce axis {iv.var.name} is {_dtype(iv.var)} but the stage indexes "
                    f"with {idx}"
                )
            n = names.fresh(iv.var.name)
            inner.append((iv.var, n))
            ax: dict[str, Any] = {"name": n, "extent": int(dom.extent.value)}
            if int(dom.min.value) != 0:
                ax["start"] = int(dom.min.value)
            axes.append(ax)
        out: dict[str, Any] = {
            "op": "reduce",
            "reducer": reducer,
            "axes": axes,
            "source": self.expr(r.source[0], inner, 2),
            "identity": self.expr(identity, scope, 2),
        }
        cond = r.condition
        if not (isinstance(cond, tirx.IntImm) and _dtype(cond) == "bool" and cond.value == 1):
            out["condition"] = self.expr(cond, inner, 2)
        if len(r.init) > 1:
            raise self.fail("reduction with several init values")
        if len(r.init) == 1:
            out["init"] = self.expr(r.init[0], scope, 2)
        return out

    # -- expressions ------------------------------------------------------------------------------

    def expr(self, e: Any, scope: list[tuple[Any, str]], depth: int) -> dict[str, Any]:
        if depth > self.max_depth:
            raise self.fail(f"expression deeper than max_expr_depth={self.max_depth}")
        d = depth + 1
        if isinstance(e, tirx.IntImm):
            dt = _dtype(e)
            if dt == "bool":
                return {"op": "bool", "value": bool(e.value)}
            return {"op": "int", "value": int(e.value), "dtype": dt}
        if isinstance(e, tirx.FloatImm):
            return {"op": "float", "value": _const_value(e), "dtype": _dtype(e)}
        if isinstance(e, tirx.Var):
            for var, n in scope:
                if var.same_as(e):
                    return {"op": "var", "name": n}
            raise self.fail(f"free variable {e.name!r} (only the stage's own axes may appear)")
        if isinstance(e, tirx.Reduce):
            raise self.fail("reduce nested inside an expression")
        cls = type(e)
        if cls in _BINARY_BY_CLASS:
            return {
                "op": _BINARY_BY_CLASS[cls],
                "a": self.expr(e.a, scope, d),
                "b": self.expr(e.b, scope, d),
            }
        if cls in _UNARY_BY_CLASS:
            return {"op": _UNARY_BY_CLASS[cls], "a": self.expr(e.a, scope, d)}
        if isinstance(e, tirx.Select):
            return {
                "op": "select",
                "condition": self.expr(e.condition, scope, d),
                "true_value": self.expr(e.true_value, scope, d),
                "false_value": self.expr(e.false_value, scope, d),
            }
        if isinstance(e, tirx.Cast):
            return {"op": "cast", "dtype": _dtype(e), "value": self.expr(e.value, scope, d)}
        if isinstance(e, ir.Call) and isinstance(e.op, ir.Op):
            return self.call(e, scope, d)
        raise self.fail(f"cannot serialize {type(e).__name__} node: {e}")

    def call(self, e: Any, scope: list[tuple[Any, str]], d: int) -> dict[str, Any]:
        op_name = e.op.name
        args = list(e.args)
        if op_name == TENSOR_LOAD_OP:
            t = args[0]
            if t.op not in self.names:
                raise self.fail(f"reads tensor {t.op.name!r} that is not in this DAG")
            if t.op.num_outputs != 1 or t.value_index != 0:
                raise self.fail(f"reads output {t.value_index} of multi-output op {t.op.name!r}")
            return {
                "op": "read",
                "tensor": self.names[t.op],
                "indices": [self.expr(i, scope, d) for i in args[1:]],
            }
        if op_name == IF_THEN_ELSE_OP:
            c, t, f = args
            return {
                "op": "if_then_else",
                "condition": self.expr(c, scope, d),
                "true_value": self.expr(t, scope, d),
                "false_value": self.expr(f, scope, d),
            }
        fn = INTRINSIC_BY_OP.get(op_name)
        if fn is None:
            raise self.fail(f"unsupported call to {op_name!r}")
        intr = INTRINSICS[fn]
        expected = "bool" if intr.result == "bool" else (_dtype(args[0]) if args else "?")
        if len(args) != intr.arity or _dtype(e) != expected:
            raise self.fail(f"call to {op_name!r} has an unexpected signature: {e}")
        return {"op": "call", "fn": fn, "args": [self.expr(a, scope, d) for a in args]}


def serialize(tensors: Sequence[te.Tensor], name: str | None = None) -> dict[str, Any]:
    """te tensors (placeholders, then outputs: ``te.create_prim_func``'s argument) -> document.

    The document is checked with the same validator the server runs, so a client finds out
    here, not from the server, that it is over a limit.
    """
    from autosched.wire.validate import validate_document

    doc = _Serializer().run(list(tensors), name)
    dag = validate_document(doc)
    return dag.model_dump(mode="json", exclude_none=True)
