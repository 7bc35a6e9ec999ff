"""Pydantic models of the wire format (version ``autosched.WIRE_FORMAT_VERSION``).

These models check the *shape* of a document: field names and types, node kinds, dtypes from
the whitelist, positive extents. Everything that needs context (does that tensor exist, is that
axis in scope, do the operand dtypes agree, is it over a size limit) is in ``validate.py``.

All models are strict (no "1" -> 1 coercion, no bool -> int) and forbid unknown fields, so a typo
in a client document is an error rather than a silently ignored key.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from autosched import WIRE_FORMAT_VERSION
from autosched.wire.ops import (
    BinaryOpName,
    Dtype,
    FloatDtype,
    IndexDtype,
    IntDtype,
    IntrinsicName,
    Reducer,
    TopiTag,
    UnaryOpName,
)

# Names become buffer, block and loop-variable names in generated code: keep them identifiers.
Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]
Dim = Annotated[StrictInt, Field(ge=1)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---------------------------------------------------------------------------------------------
# Expression nodes. Every node has an ``op`` field; the union below dispatches on it.


class IntConst(_Model):
    """An integer constant (``tvm.tirx.IntImm``)."""

    op: Literal["int"]
    value: StrictInt
    dtype: IntDtype = "int32"


class FloatConst(_Model):
    """A floating-point constant (``tvm.tirx.FloatImm``).

    JSON has no infinity or NaN, so those are the strings ``"inf"``, ``"-inf"`` and ``"nan"``.
    """

    op: Literal["float"]
    value: FiniteFloat | Literal["inf", "-inf", "nan"]
    dtype: FloatDtype = "float32"


class BoolConst(_Model):
    """``true`` or ``false`` (an ``IntImm`` of dtype bool in TVM)."""

    op: Literal["bool"]
    value: StrictBool


class AxisRef(_Model):
    """A loop variable: one of the stage's spatial ``axes``, or inside a ``reduce`` node's
    ``source``/``condition``, one of that reduction's ``axes``."""

    op: Literal["var"]
    name: Name


class Read(_Model):
    """``tensor[indices...]``: an element of a placeholder or of an earlier stage."""

    op: Literal["read"]
    tensor: Name
    indices: list[Expr]


class Binary(_Model):
    """``a <op> b``. Both operands must have the same dtype (TVM does not promote here)."""

    op: BinaryOpName
    a: Expr
    b: Expr


class Unary(_Model):
    """``not a`` (bool) or ``~a`` (integer)."""

    op: UnaryOpName
    a: Expr


class Select(_Model):
    """``condition ? true_value : false_value``; both branches may be evaluated."""

    op: Literal["select"]
    condition: Expr
    true_value: Expr
    false_value: Expr


class IfThenElse(_Model):
    """Like ``select`` but only the taken branch is evaluated (padding uses this)."""

    op: Literal["if_then_else"]
    condition: Expr
    true_value: Expr
    false_value: Expr


class Cast(_Model):
    """Convert ``value`` to ``dtype``."""

    op: Literal["cast"]
    dtype: Dtype
    value: Expr


class Call(_Model):
    """A pure math intrinsic (``exp``, ``sqrt``, ``pow``, ...); see the list in the schema."""

    op: Literal["call"]
    fn: IntrinsicName
    args: list[Expr]


class ReduceAxis(_Model):
    """A reduction loop ``name`` over ``[start, start + extent)``."""

    name: Name
    extent: Dim
    start: Annotated[StrictInt, Field(ge=0)] = 0


class Reduce(_Model):
    """A commutative reduction over ``axes``. Only allowed as a whole stage body.

    ``identity`` is the reducer's neutral element (TVM's defaults: 0 for sum, the lowest finite
    value of the dtype for max, the highest for min). ``condition`` skips elements where it is
    false; ``init`` replaces the identity as the starting value of the output.
    """

    op: Literal["reduce"]
    reducer: Reducer
    axes: list[ReduceAxis]
    source: Expr
    identity: Annotated[IntConst | FloatConst | BoolConst, Field(discriminator="op")] | None = None
    condition: Expr | None = None
    init: Expr | None = None


Expr = Annotated[
    IntConst
    | FloatConst
    | BoolConst
    | AxisRef
    | Read
    | Binary
    | Unary
    | Select
    | IfThenElse
    | Cast
    | Call
    | Reduce,
    Field(discriminator="op"),
]

# ---------------------------------------------------------------------------------------------
# Tensors and the DAG.


class TensorRefs(_Model):
    """An attribute value that is a list of tensors (``layout_free_placeholders``)."""

    tensors: list[Name]


class StageAttrs(_Model):
    """The te op's ``attrs``, from an allow-list (``ops.STAGE_ATTRS``): attrs become block
    annotations or function attributes, and some annotations reach code generation, so a key
    is accepted only when its meaning is known and harmless. Every other key is refused."""

    layout_free_placeholders: TensorRefs | None = None


class Placeholder(_Model):
    """An input tensor."""

    name: Name
    shape: list[Dim]
    dtype: Dtype
    index_dtype: IndexDtype = "int32"


class Stage(_Model):
    """A ``te.compute``: ``name[axes...] = body`` over ``shape``.

    ``dtype`` must equal the dtype of ``body``. ``tag`` is the te op's tag, from TOPI's
    vocabulary (``ops.TOPI_TAGS``; descriptive only, it does not reach the PrimFunc). ``attrs``
    are the op's attributes, from an allow-list (``StageAttrs``).
    """

    name: Name
    shape: list[Dim]
    dtype: Dtype
    axes: list[Name]
    body: Expr
    index_dtype: IndexDtype = "int32"
    tag: TopiTag = ""
    attrs: StageAttrs = Field(default_factory=StageAttrs)


class ComputeDAG(_Model):
    """A compute declaration: placeholders, stages in topological order, outputs, arguments.

    ``args`` is the PrimFunc's parameter list (``te.create_prim_func``'s argument): every
    placeholder, then the outputs, in order.
    """

    model_config = ConfigDict(title="autosched compute DAG")

    format_version: Literal[WIRE_FORMAT_VERSION]  # type: ignore[valid-type]
    name: Name | None = None
    placeholders: list[Placeholder]
    stages: list[Stage]
    outputs: Annotated[list[Name], Field(min_length=1)]
    args: list[Name]


for _m in (Read, Binary, Unary, Select, IfThenElse, Cast, Call, Reduce, Stage, ComputeDAG):
    _m.model_rebuild()
