"""The published schema and the documentation agree with the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

from autosched import WIRE_FORMAT_VERSION, zoo
from autosched.wire import Workload, workload_key
from autosched.wire.ops import BINARY_OPS, INTRINSICS, UNARY_OPS
from autosched.wire.schema import SCHEMA_PATH, main, render

DOCS = Path(__file__).resolve().parents[1] / "docs" / "wire-format.md"


def test_schema_json_is_up_to_date() -> None:
    assert SCHEMA_PATH.read_text() == render(), (
        "schema.json is stale: run `python -m autosched.wire.schema`"
    )
    assert main(["--check"]) == 0


def test_schema_covers_every_node_kind() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert set(schema["required"]) == {
        "format_version",
        "placeholders",
        "stages",
        "outputs",
        "args",
    }
    assert schema["properties"]["format_version"]["const"] == WIRE_FORMAT_VERSION
    mapping = schema["$defs"]["Stage"]["properties"]["body"]["discriminator"]["mapping"]
    expected = {"int", "float", "bool", "var", "read", "select", "if_then_else", "cast", "call"}
    assert set(mapping) == expected | {"reduce"} | set(BINARY_OPS) | set(UNARY_OPS)
    fns = schema["$defs"]["Call"]["properties"]["fn"]["enum"]
    assert set(fns) == set(INTRINSICS)


def _docs_example() -> str:
    text = DOCS.read_text()
    m = re.search(r"```json\n(.*?)```", text, re.S)
    assert m, "docs/wire-format.md has no ```json example"
    return m.group(1)


def test_docs_example_deserializes_to_the_zoo_matmul() -> None:
    w = Workload.from_json(_docs_example())
    assert w.name == "matmul_512"
    assert [t.name for t in w.tensors] == ["A", "B", "C"]
    assert w.key == workload_key(zoo.prim_func("matmul_512"))
    # The key the docs print is the real one.
    assert w.key in DOCS.read_text()
