"""Stage analysis: classify every block of a workload's PrimFunc into a meta-template.

The rules look only at the block's iteration kinds, its access patterns and its place in the
DAG, never at names, so they hold for any te DAG:

* a block with a reduction axis is a *complex reduction* when some operand it reads does not
  vary along one of its spatial axes (extent > 1): that operand is reused across that axis and
  multi-level tiling pays off (matmul, conv, depthwise conv);
  otherwise it is a *simple reduction* (row sum, max-pool, softmax's max/sum, norms);
* an injective block that feeds a reduction is *location-tunable*: where it is computed (inlined
  into the reduction's inner loop, at root, or at a loop of its consumer) changes the cost by
  orders of magnitude (padding inlined into a conv puts a branch in the micro-kernel);
* every other injective block is *direct compute*: inlined, fused or parallel + vectorized.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import tvm
from tvm import s_tir, tirx

from autosched.fast_math import is_rewritable


class MetaTemplateKind(StrEnum):
    DIRECT_COMPUTE = "direct_compute"
    SIMPLE_REDUCTION = "simple_reduction"
    COMPLEX_REDUCTION = "complex_reduction"
    LOCATION_TUNABLE = "location_tunable"


@dataclass(frozen=True)
class ReadInfo:
    buffer: str
    #: for each index of the access, the block iter vars (by position) it depends on
    index_vars: tuple[tuple[int, ...], ...]
    dtype: str


@dataclass(frozen=True)
class StageInfo:
    name: str
    iter_kinds: str  # one letter per block iter var: S spatial, R reduction, O other
    extents: tuple[int, ...]
    meta_template: MetaTemplateKind
    reason: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    is_output: bool  # writes a function parameter
    write_dtype: str  # of the first buffer it writes (a GPU template's tensor cores need it)
    reads: tuple[ReadInfo, ...] = field(repr=False)
    has_conditional: bool = False  # body contains select / if_then_else (padding)
    has_index_arith: bool = False  # reads use floordiv / floormod (reshape-like)
    #: float32 transcendentals the body calls that have a vectorizable fast form
    #: (``fast_math``): short names such as ``exp``, ``erf``, sorted
    transcendentals: tuple[str, ...] = ()

    @property
    def spatial_axes(self) -> list[int]:
        return [i for i, k in enumerate(self.iter_kinds) if k == "S"]

    @property
    def reduction_axes(self) -> list[int]:
        return [i for i, k in enumerate(self.iter_kinds) if k == "R"]

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["meta_template"] = str(self.meta_template)
        doc.pop("reads")
        return doc


_ITER_KIND = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}


# Fields through which TIR expressions and statements hold their children. TVM 0.27 exposes no
# Python post-order visitor for tirx, and a generic walk over these is enough for analysis.
_CHILD_FIELDS = (
    "a",
    "b",
    "value",
    "condition",
    "true_value",
    "false_value",
    "args",
    "indices",
    "body",
    "source",
    "seq",
    "then_case",
    "else_case",
    "init",
    "min",
    "extent",
)


def _walk(node: Any, visit: Any) -> None:
    stack = [node]
    while stack:
        item = stack.pop()
        if item is None:
            continue
        if isinstance(item, list | tuple | tvm.ir.Array):
            stack.extend(item)
            continue
        visit(item)
        for name in _CHILD_FIELDS:
            child = getattr(item, name, None)
            if child is not None and not isinstance(child, int | float | str | bool):
                stack.append(child)


def _vars_in(expr: Any, var_pos: dict[Any, int]) -> tuple[int, ...]:
    found: set[int] = set()

    def visit(node: Any) -> None:
        if isinstance(node, tirx.Var) and node in var_pos:
            found.add(var_pos[node])

    _walk(expr, visit)
    return tuple(sorted(found))


def _body_flags(block: Any) -> tuple[bool, bool]:
    conditional = index_arith = False

    def visit(node: Any) -> None:
        nonlocal conditional, index_arith
        if isinstance(node, tirx.Select) or (
            isinstance(node, tvm.ir.expr.Call)
            and getattr(node.op, "name", "").endswith("if_then_else")
        ):
            conditional = True
        elif type(node).__name__ in ("BufferLoad", "TensorLoad") and any(
            _has_div_mod(index) for index in node.indices
        ):
            index_arith = True

    _walk(block.body, visit)
    return conditional, index_arith


def _transcendentals(block: Any) -> tuple[str, ...]:
    found: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, tvm.ir.expr.Call) and is_rewritable(node):
            found.add(node.op.name.removeprefix("tirx."))

    _walk(block.body, visit)
    return tuple(sorted(found))


def _has_div_mod(expr: Any) -> bool:
    hit = False

    def visit(node: Any) -> None:
        nonlocal hit
        if isinstance(node, tirx.FloorDiv | tirx.FloorMod | tirx.Div | tirx.Mod):
            hit = True

    _walk(expr, visit)
    return hit


def block_reads(block: Any) -> tuple[ReadInfo, ...]:
    var_pos = {iv.var: i for i, iv in enumerate(block.iter_vars)}
    reads: list[ReadInfo] = []
    for region in block.reads:
        index_vars = tuple(_vars_in(r.min, var_pos) for r in region.region)
        reads.append(ReadInfo(region.source.name, index_vars, str(region.source.dtype)))
    return (reads and tuple(reads)) or ()


def _has_reuse(kinds: str, extents: tuple[int, ...], reads: tuple[ReadInfo, ...]) -> str | None:
    """Name an operand that stays constant along some spatial axis, if any."""
    spatial = {i for i, k in enumerate(kinds) if k == "S" and extents[i] > 1}
    for read in reads:
        used = {v for index in read.index_vars for v in index}
        missing = spatial - used
        if missing:
            return f"{read.buffer} is reused along spatial axes {sorted(missing)}"
    return None


def _classify(
    name: str,
    kinds: str,
    extents: tuple[int, ...],
    reads: tuple[ReadInfo, ...],
    consumer_kinds: list[str],
    conditional: bool,
) -> tuple[MetaTemplateKind, str]:
    if "R" in kinds:
        reuse = _has_reuse(kinds, extents, reads)
        if reuse:
            return MetaTemplateKind.COMPLEX_REDUCTION, f"reduction with data reuse: {reuse}"
        return (
            MetaTemplateKind.SIMPLE_REDUCTION,
            "reduction whose operands vary along every spatial axis (no reuse to tile for)",
        )
    if "O" in kinds:
        return MetaTemplateKind.DIRECT_COMPUTE, "opaque iteration: scheduled as plain loops"
    if any("R" in k for k in consumer_kinds):
        what = "conditional producer (padding)" if conditional else "injective producer"
        return (
            MetaTemplateKind.LOCATION_TUNABLE,
            f"{what} of a reduction: its compute-at location is a knob",
        )
    return MetaTemplateKind.DIRECT_COMPUTE, "injective: inline, fuse, or parallel + vectorize"


def analyze(func: tirx.PrimFunc) -> list[StageInfo]:
    """One StageInfo per block, in program order."""
    sch = s_tir.Schedule(func)
    block_rvs = sch.get_child_blocks(sch.get_sblock("root"))
    blocks = [sch.get(b) for b in block_rvs]
    param_buffers = {p.name for p in func.params}
    kinds = {
        b.name_hint: "".join(_ITER_KIND.get(iv.iter_type, "O") for iv in b.iter_vars)
        for b in blocks
    }
    stages: list[StageInfo] = []
    for rv, block in zip(block_rvs, blocks, strict=True):
        name = block.name_hint
        extents = tuple(int(iv.dom.extent) for iv in block.iter_vars)
        producers = tuple(sch.get(p).name_hint for p in sch.get_producers(rv))
        consumers = tuple(sch.get(c).name_hint for c in sch.get_consumers(rv))
        reads = block_reads(block)
        conditional, index_arith = _body_flags(block)
        template, reason = _classify(
            name, kinds[name], extents, reads, [kinds[c] for c in consumers], conditional
        )
        stages.append(
            StageInfo(
                name=name,
                iter_kinds=kinds[name],
                extents=extents,
                meta_template=template,
                reason=reason,
                producers=producers,
                consumers=consumers,
                is_output=any(w.source.name in param_buffers for w in block.writes),
                write_dtype=str(block.writes[0].source.dtype) if block.writes else "",
                reads=reads,
                has_conditional=conditional,
                has_index_arith=index_arith,
                transcendentals=_transcendentals(block),
            )
        )
    return stages


def flops(func: tirx.PrimFunc) -> float:
    return float(s_tir.analysis.estimate_tir_flops(tvm.IRModule({"main": func})))
