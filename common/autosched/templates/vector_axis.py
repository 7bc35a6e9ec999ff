"""Which spatial axis of a complex reduction gets the vector lanes (the ``vector_axis`` knob).

The usual choice is the innermost spatial axis: contiguous in the output, and in every
operand that the output's last index also indexes. It is a poor one when that axis is short
or awkward for the vector width (a conv's 14-, 28- or 56-wide output rows on 16 lanes leave
lanes empty in every instruction) or read with a stride (a stride-2 conv reads its input at
``2 * ow + kw``: a gather per vector). Another spatial axis can carry the lanes instead when
every operand either ignores it (the operand is broadcast to all lanes: the conv's input
along its output channels) or indexes it alone in one dimension (the operand is packed to
``[x // w, ..., x % w]``, so lanes are contiguous: the conv's weights). The accumulator then
keeps the lanes innermost too: its buffer is laid out ``[..., x // w, ..., x % w]`` (a
write cache or the intermediate buffer of a fused epilogue), and the write-back to the
output's own layout happens once per tile. This is the NCHWc scheme of TVM's x86 convs,
reached by layout transforms of a plain NCHW compute rather than a separate declaration.
"""

from __future__ import annotations

from tvm import tirx
from tvm.tirx import IndexMap

from autosched.analysis import StageInfo

VECTOR_AXIS = "vector_axis"


def innermost_axis(stage: StageInfo) -> int | None:
    """The innermost spatial axis with extent > 1: contiguous in the output."""
    for axis in reversed(stage.spatial_axes):
        if stage.extents[axis] > 1:
            return axis
    return None


def _carries_lanes(stage: StageInfo, axis: int) -> bool:
    """Every read ignores ``axis`` or indexes it alone in exactly one dimension, and at least
    one read ignores it (the reuse that makes tiling pay) and one indexes it (else the axis
    is a plain batch loop)."""
    ignores = indexes = False
    for read in stage.reads:
        dims = [d for d, used in enumerate(read.index_vars) if axis in used]
        if not dims:
            ignores = True
        elif len(dims) == 1 and read.index_vars[dims[0]] == (axis,):
            indexes = True
        else:
            return False
    return ignores and indexes


def vector_axis_options(stage: StageInfo) -> tuple[int, ...]:
    """The innermost spatial axis first, then every other axis that can carry the lanes."""
    inner = innermost_axis(stage)
    if inner is None:
        return ()
    others = [
        a
        for a in stage.spatial_axes
        if a != inner and stage.extents[a] > 1 and _carries_lanes(stage, a)
    ]
    return (inner, *others)


def static_vector_axis(stage: StageInfo, lanes: int) -> int | None:
    """The innermost axis unless it cannot fill whole vectors and another axis can: the
    innermost such axis (a conv's output channels rather than its batch: the operand packed
    for it is then the weights, not the whole input)."""
    options = vector_axis_options(stage)
    if not options:
        return None
    inner = options[0]
    if stage.extents[inner] % lanes == 0:
        return inner
    whole = [a for a in options[1:] if stage.extents[a] % lanes == 0]
    return whole[-1] if whole else inner


def lanes_innermost(ndim: int, dim: int, width: int) -> IndexMap:
    """``[..., x, ...] -> [..., x // width, ..., x % width]`` for dimension ``dim``."""
    # int32 index variables like te's loops (IndexMap.from_func makes int64 ones, which TVM
    # then fails to match against int32 loops).
    idx = [tirx.Var(f"i{n}", "int32") for n in range(ndim)]
    blocked = [idx[d] // width if d == dim else idx[d] for d in range(ndim)]
    return IndexMap(idx, [*blocked, idx[dim] % width], None)


def write_dim(stage: StageInfo, axis: int) -> int:
    """The output dimension ``axis`` indexes: te outputs index the spatial axes in order."""
    return stage.spatial_axes.index(axis)
