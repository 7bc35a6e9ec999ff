"""The vocabulary of the wire format: dtypes, operators and intrinsics, in one table each.

The models, the validator, the serializer and the deserializer all read these tables, so adding
an operator is one line here plus (for a new TVM node class) one line in the builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Element types a client may use. Anything else (handles, vectors, custom types) is refused:
# the scheduler and the cost model only know these.
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8")
DTYPES = ("bool", *INT_DTYPES, *FLOAT_DTYPES)
INDEX_DTYPES = ("int32", "int64")

Dtype = Literal[
    "bool", "int8", "int16", "int32", "int64", "uint8", "float16", "bfloat16", "float32", "float64"
]
IntDtype = Literal["int8", "int16", "int32", "int64", "uint8"]
FloatDtype = Literal["float16", "bfloat16", "float32", "float64"]
IndexDtype = Literal["int32", "int64"]

ITEM_BYTES = {
    "bool": 1,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "float16": 2,
    "bfloat16": 2,
    "int32": 4,
    "float32": 4,
    "int64": 8,
    "float64": 8,
}

INT_RANGE = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint8": (0, 2**8 - 1),
}

# Binary operators, wire name -> TVM node class name (in tvm.tirx) and the operand rule:
#   "num": both operands one numeric dtype, result that dtype
#   "int": both operands one integer dtype, result that dtype
#   "cmp": both operands one dtype, result bool
#   "bool": both operands bool, result bool
BINARY_OPS: dict[str, tuple[str, str]] = {
    "add": ("Add", "num"),
    "sub": ("Sub", "num"),
    "mul": ("Mul", "num"),
    "div": ("Div", "num"),
    "mod": ("Mod", "num"),
    "floordiv": ("FloorDiv", "num"),
    "floormod": ("FloorMod", "num"),
    "min": ("Min", "num"),
    "max": ("Max", "num"),
    "eq": ("EQ", "cmp"),
    "ne": ("NE", "cmp"),
    "lt": ("LT", "cmp"),
    "le": ("LE", "cmp"),
    "gt": ("GT", "cmp"),
    "ge": ("GE", "cmp"),
    "and": ("And", "bool"),
    "or": ("Or", "bool"),
    "bitwise_and": ("BitwiseAnd", "int"),
    "bitwise_or": ("BitwiseOr", "int"),
    "bitwise_xor": ("BitwiseXor", "int"),
    "shift_left": ("LShift", "int"),
    "shift_right": ("RShift", "int"),
}
BinaryOpName = Literal[
    "add",
    "sub",
    "mul",
    "div",
    "mod",
    "floordiv",
    "floormod",
    "min",
    "max",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "and",
    "or",
    "bitwise_and",
    "bitwise_or",
    "bitwise_xor",
    "shift_left",
    "shift_right",
]

# Unary operators that are their own TVM node class.
UNARY_OPS: dict[str, tuple[str, str]] = {
    "not": ("Not", "bool"),
    "bitwise_not": ("BitwiseNot", "int"),
}
UnaryOpName = Literal["not", "bitwise_not"]


@dataclass(frozen=True)
class Intrinsic:
    """A pure TVM intrinsic call (``tvm.ir.Call`` to a registered ``tvm.ir.Op``)."""

    op_name: str  # the registered op, e.g. "tirx.exp"; note a few live under "prim."
    arity: int
    arg_kind: str  # "float" or "bool": what every argument must be (all of one dtype)
    result: str  # "same": the argument dtype; "bool"


def _float(op_name: str, arity: int = 1) -> Intrinsic:
    return Intrinsic(op_name, arity, "float", "same")


# Wire name -> intrinsic. Names are what the te/topi helpers produce in TVM 0.27 (te.abs on a
# float gives "tirx.fabs"; te.ceil gives "prim.ceil"; te.log2 gives "prim.log2").
INTRINSICS: dict[str, Intrinsic] = {
    **{
        n: _float(f"tirx.{n}")
        for n in (
            "exp",
            "exp2",
            "exp10",
            "log",
            "log10",
            "log1p",
            "sqrt",
            "rsqrt",
            "sin",
            "cos",
            "tan",
            "sinh",
            "cosh",
            "tanh",
            "asin",
            "acos",
            "atan",
            "asinh",
            "acosh",
            "atanh",
            "erf",
            "sigmoid",
            "fabs",
            "floor",
            "round",
            "nearbyint",
            "trunc",
        )
    },
    "log2": _float("prim.log2"),
    "ceil": _float("prim.ceil"),
    **{
        n: _float(f"tirx.{n}", 2)
        # Not tirx.fmod: registered, but LLVM codegen in 0.27 has no lowering for it.
        for n in ("pow", "atan2", "hypot", "copysign", "nextafter")
    },
    # Not tirx.isinf / tirx.isfinite: TVM 0.27 registers those ops without TCallEffectKind, so
    # create_prim_func fails on them (te.isinf builds an expression from isnan/fabs instead).
    "isnan": Intrinsic("tirx.isnan", 1, "float", "bool"),
    "likely": Intrinsic("prim.likely", 1, "bool", "bool"),
}
# Derived from the table so the two can never drift apart (pydantic builds the schema enum).
IntrinsicName = Literal[tuple(INTRINSICS)]  # type: ignore[valid-type]
INTRINSIC_BY_OP = {v.op_name: k for k, v in INTRINSICS.items()}

IF_THEN_ELSE_OP = "prim.if_then_else"
TENSOR_LOAD_OP = "te.tensor_load"

REDUCERS = ("sum", "max", "min")
Reducer = Literal["sum", "max", "min"]

NON_FINITE = {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}

# Stage attrs (te.compute ``attrs``) a document may carry. Attrs become block annotations or
# function attributes in the PrimFunc, and some annotations reach code generation: a
# ``pragma_import_llvm`` string is parsed as LLVM IR and linked into the kernel (a value ending
# in ``.ll`` is read from disk). So this is an allow-list of keys whose meaning is known and
# harmless, never a deny-list. ``layout_free_placeholders`` (value: placeholder names) becomes
# the ``layout_free_buffers`` function attribute, a list of parameter indices. TVM's own
# scheduler hints (``schedule_rule``, topi's ``axis``) are not listed: our templates do not
# read annotations, so ``serialize`` drops them.
STAGE_ATTRS = ("layout_free_placeholders",)

# A te op's ``tag`` names its kind in TOPI's vocabulary. It does not reach the PrimFunc (checked
# in tests/test_wire_trust.py: not in the built function, not in its structural hash), but it is
# stored with the document and shown back to other users, so free text is refused: the tag is
# one of these (the generic categories from ``tvm.topi.tag``, their composites, and the named
# kernels topi's CPU-relevant compute definitions emit) or empty. ``serialize`` drops others.
TOPI_TAGS = (
    "",
    # generic categories (tvm.topi.tag) and composites
    "elemwise",
    "broadcast",
    "injective",
    "comm_reduce",
    "comm_reduce_idx",
    "injective,pad",
    "injective,dilate",
    # named kernels
    "matmul",
    "dense",
    "dense_pack",
    "batch_matmul",
    "einsum",
    "conv1d_ncw",
    "conv1d_nwc",
    "conv2d_nchw",
    "conv2d_nhwc",
    "conv2d_hwcn",
    "conv3d_ncdhw",
    "conv3d_ndhwc",
    "group_conv2d_nchw",
    "group_conv2d_nhwc",
    "depthwise_conv2d_nchw",
    "depthwise_conv2d_nhwc",
    "conv1d_transpose_ncw",
    "conv2d_transpose_nchw",
    "conv3d_transpose_ncdhw",
    "pool_max",
    "pool_sum",
    "pool_avg",
    "adaptive_pool_max",
    "adaptive_pool_sum",
    "adaptive_pool_avg",
    "softmax_output",
    "log_softmax_output",
    "fast_softmax_output",
    "sqr_sum",
)
TopiTag = Literal[TOPI_TAGS]  # type: ignore[valid-type]
