"""Wire document -> te tensors.

Runs only on a document that ``validate.check`` accepted, and builds every node with its raw
TVM constructor (``tirx.Add(a, b)``, not ``a + b``): the Python operator overloads fold constants
and insert casts, which would make the rebuilt DAG differ from the one that was serialized.
Nothing here evaluates code, unpickles, parses TVMScript or calls ``tvm.ir.load_json``.
"""

from __future__ import annotations

from typing import Any

from tvm import ir, te, tirx

from autosched.errors import WireFormatError
from autosched.wire import models as m
from autosched.wire.ops import BINARY_OPS, IF_THEN_ELSE_OP, INTRINSICS, NON_FINITE, UNARY_OPS
from autosched.wire.validate import validate_document


def _dtype(e: Any) -> str:
    return str(e.ty.dtype)


def _const(dtype: str, value: float | int | bool) -> Any:
    if dtype.startswith("float") or dtype == "bfloat16":
        return tirx.FloatImm(dtype, float(value))
    return tirx.IntImm(dtype, int(value))


class _Builder:
    def __init__(self, dag: m.ComputeDAG) -> None:
        self.dag = dag
        self.tensors: dict[str, te.Tensor] = {}
        self.path = ""  # where we are, for the message if TVM refuses something anyway

    def run(self) -> list[te.Tensor]:
        for i, p in enumerate(self.dag.placeholders):
            self.path = f"placeholders[{i}]"
            shape = [tirx.IntImm(p.index_dtype, d) for d in p.shape]
            self.tensors[p.name] = te.placeholder(shape, p.dtype, p.name)
        for i, st in enumerate(self.dag.stages):
            self.path = f"stages[{i}]"
            self.tensors[st.name] = self.stage(st)
        return [self.tensors[a] for a in self.dag.args]

    def stage(self, st: m.Stage) -> te.Tensor:
        def fcompute(*axes: Any) -> Any:
            return self.expr(st.body, dict(zip(st.axes, axes, strict=True)), st.index_dtype)

        # Only allow-listed attrs exist on the model (validate refused the rest), and none of
        # them carries client text: layout_free_placeholders holds tensors, not strings.
        attrs: dict[str, Any] = {}
        refs = st.attrs.layout_free_placeholders
        if refs is not None:
            attrs["layout_free_placeholders"] = [self.tensors[t] for t in refs.tensors]
        return te.compute(
            [tirx.IntImm(st.index_dtype, d) for d in st.shape],
            fcompute,
            name=st.name,
            tag=st.tag,
            attrs=attrs or None,
            varargs_names=list(st.axes),
        )

    def expr(self, e: m.Expr, env: dict[str, Any], idx: str) -> Any:
        # Depth is bounded by validation (max_expr_depth), so plain recursion is safe here.
        if isinstance(e, m.IntConst):
            return tirx.IntImm(e.dtype, e.value)
        if isinstance(e, m.FloatConst):
            value = NON_FINITE[e.value] if isinstance(e.value, str) else e.value
            return tirx.FloatImm(e.dtype, value)
        if isinstance(e, m.BoolConst):
            return tirx.IntImm("bool", int(e.value))
        if isinstance(e, m.AxisRef):
            return env[e.name]
        if isinstance(e, m.Read):
            return self.tensors[e.tensor](*[self.expr(i, env, idx) for i in e.indices])
        if isinstance(e, m.Binary):
            cls = getattr(tirx, BINARY_OPS[e.op][0])
            return cls(self.expr(e.a, env, idx), self.expr(e.b, env, idx))
        if isinstance(e, m.Unary):
            return getattr(tirx, UNARY_OPS[e.op][0])(self.expr(e.a, env, idx))
        if isinstance(e, m.Select):
            return tirx.Select(
                self.expr(e.condition, env, idx),
                self.expr(e.true_value, env, idx),
                self.expr(e.false_value, env, idx),
            )
        if isinstance(e, m.IfThenElse):
            args = [self.expr(x, env, idx) for x in (e.condition, e.true_value, e.false_value)]
            return ir.Call(ir.Op.get(IF_THEN_ELSE_OP), args, ret_ty=_dtype(args[1]))
        if isinstance(e, m.Cast):
            return tirx.Cast(e.dtype, self.expr(e.value, env, idx))
        if isinstance(e, m.Call):
            intr = INTRINSICS[e.fn]
            args = [self.expr(a, env, idx) for a in e.args]
            ret = "bool" if intr.result == "bool" else _dtype(args[0])
            return ir.Call(ir.Op.get(intr.op_name), args, ret_ty=ret)
        if isinstance(e, m.Reduce):
            return self.reduce(e, env, idx)
        raise WireFormatError(f"unknown expression node {type(e).__name__}", self.path)

    def reduce(self, e: m.Reduce, env: dict[str, Any], idx: str) -> Any:
        ivs = [
            tirx.IterVar(
                ir.Range.from_min_extent(tirx.IntImm(idx, ax.start), tirx.IntImm(idx, ax.extent)),
                ax.name,
                tirx.IterVar.CommReduce,
            )
            for ax in e.axes
        ]
        init = [self.expr(e.init, env, idx)] if e.init is not None else []
        inner = {**env, **{ax.name: iv.var for ax, iv in zip(e.axes, ivs, strict=True)}}
        source = self.expr(e.source, inner, idx)
        dtype = _dtype(source)
        if e.condition is not None:
            condition = self.expr(e.condition, inner, idx)
        else:
            condition = tirx.IntImm("bool", 1)
        # The combiner is built exactly as te.sum / te.max / te.min build theirs, so a DAG made
        # with those helpers round-trips to a structurally equal one.
        if e.identity is not None:
            identity = self.expr(e.identity, env, idx)
        elif e.reducer == "sum":
            identity = _const(dtype, 0)
        elif e.reducer == "max":
            identity = te.min_value(dtype)
        else:
            identity = te.max_value(dtype)
        x, y = ir.Var("x", dtype), ir.Var("y", dtype)
        result = {"sum": tirx.Add, "max": tirx.Max, "min": tirx.Min}[e.reducer](x, y)
        combiner = tirx.CommReducer([x], [y], [result], [identity])
        return tirx.Reduce(combiner, [source], ivs, condition, 0, init)


def build(dag: m.ComputeDAG) -> list[te.Tensor]:
    """Build te tensors from a *checked* DAG; TVM errors become ``WireFormatError``."""
    b = _Builder(dag)
    try:
        return b.run()
    except WireFormatError:
        raise
    except Exception as e:  # any TVM/Python failure must reach the client as a format error
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise WireFormatError(
            f"TVM refused the declaration ({type(e).__name__}: {first[:300]})", b.path
        ) from None


def deserialize(doc: m.ComputeDAG | dict[str, Any] | str | bytes) -> list[te.Tensor]:
    """Validate a wire document and rebuild its te tensors, in ``args`` order.

    The result is the argument list for ``te.create_prim_func``. Every problem with the input
    raises ``autosched.errors.WireFormatError``.
    """
    try:
        dag = validate_document(doc)
    except WireFormatError:
        raise
    except Exception as e:  # a validator bug must still not leak a raw exception to a client
        raise WireFormatError(f"invalid document ({type(e).__name__}: {e})") from None
    return build(dag)
