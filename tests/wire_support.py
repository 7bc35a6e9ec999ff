"""Helpers shared by the wire-format tests."""

from __future__ import annotations

from typing import Any

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


# Expression builders and a small valid document, as a client would write them.


def V(name: str) -> dict[str, Any]:
    return {"op": "var", "name": name}


def R(tensor: str, *indices: dict[str, Any]) -> dict[str, Any]:
    return {"op": "read", "tensor": tensor, "indices": list(indices)}


def F(value: float | str, dtype: str = "float32") -> dict[str, Any]:
    return {"op": "float", "value": value, "dtype": dtype}


def I(value: int, dtype: str = "int32") -> dict[str, Any]:  # noqa: E743
    return {"op": "int", "value": value, "dtype": dtype}


def base() -> dict[str, Any]:
    """D = relu(A @ B + bias), as a client would write it (defaults left out)."""
    return {
        "format_version": 1,
        "name": "mm_relu",
        "placeholders": [
            {"name": "A", "shape": [4, 8], "dtype": "float32"},
            {"name": "B", "shape": [8, 6], "dtype": "float32"},
            {"name": "bias", "shape": [6], "dtype": "float32"},
        ],
        "stages": [
            {
                "name": "C",
                "shape": [4, 6],
                "dtype": "float32",
                "axes": ["i", "j"],
                "body": {
                    "op": "reduce",
                    "reducer": "sum",
                    "axes": [{"name": "k", "extent": 8}],
                    "source": {
                        "op": "mul",
                        "a": R("A", V("i"), V("k")),
                        "b": R("B", V("k"), V("j")),
                    },
                },
            },
            {
                "name": "D",
                "shape": [4, 6],
                "dtype": "float32",
                "axes": ["x", "y"],
                "body": {
                    "op": "max",
                    "a": {"op": "add", "a": R("C", V("x"), V("y")), "b": R("bias", V("y"))},
                    "b": F(0.0),
                },
            },
        ],
        "outputs": ["D"],
        "args": ["A", "B", "bias", "D"],
    }
