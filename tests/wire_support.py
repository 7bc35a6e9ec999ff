"""Helpers shared by the wire-format tests."""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx


def without_block_annotations(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every block annotation removed.

    A server-built PrimFunc has none (the only accepted attr, layout_free_placeholders, becomes
    a function attribute), while ``te.create_prim_func`` on topi tensors keeps TVM's scheduler
    hints (``schedule_rule``, ``axis``) that ``serialize`` drops. Comparing against this is
    comparing the computation.
    """

    def strip(block: tvm.s_tir.SBlock) -> tvm.s_tir.SBlock:
        if not block.annotations:
            return block
        return tvm.s_tir.SBlock(
            block.iter_vars,
            block.reads,
            block.writes,
            block.name_hint,
            block.body,
            block.init,
            block.alloc_buffers,
            block.match_buffers,
            {},
        )

    return tvm_ffi.structural_map(func, (tvm.s_tir.SBlock, strip))


def block_annotations(func: tirx.PrimFunc) -> dict[str, dict[str, object]]:
    """Block name -> its annotations, for every block in ``func``."""
    out: dict[str, dict[str, object]] = {}

    def visit(block: tvm.s_tir.SBlock) -> None:
        out[str(block.name_hint)] = dict(block.annotations)

    tvm_ffi.structural_walk(func, (tvm.s_tir.SBlock, visit))
    return out
