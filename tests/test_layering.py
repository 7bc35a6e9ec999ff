"""Dependencies point one way: processes on the library, and inside it down the layers.

An AST walk over every module of ``common/autosched``, ``services`` and ``workers``: every
``import`` and ``from ... import`` (at module level, inside functions, under
``TYPE_CHECKING``) and every ``importlib.import_module("...")`` / ``__import__("...")`` with a
literal name. The rules (ARCHITECTURE.md, "Layers and import rules"):

- the library (``autosched``) imports nothing from ``services`` or ``workers``; the ``autosched``
  command finds the server commands through entry points (``autosched.commands``);
- ``services`` and ``workers`` do not import each other (what both need is in the library);
- the service layer (``autosched.service``) never imports the client or the CLI;
- the tuning engine (``autosched.tune``) never imports the service layer, its database or
  the client;
- scheduling (``schedule``, ``templates``, ``analysis``, ``space``) and the wire format
  import neither the tuning engine, the service layer, the database nor the client;
- the wire format imports nothing of the scheduling layer above it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Where each top-level package's sources are (``autosched`` lives in ``common/``).
PACKAGE_DIRS = {
    "autosched": ROOT / "common" / "autosched",
    "services": ROOT / "services",
    "workers": ROOT / "workers",
}

SCHEDULING = [
    "autosched.schedule",
    "autosched.templates",
    "autosched.analysis",
    "autosched.space",
    "autosched.wire",
]
HIGHER_THAN_SCHEDULING = [
    "autosched.tune",
    "autosched.service",
    "autosched.db",
    "autosched.client",
]


@dataclass(frozen=True)
class Rule:
    """Modules under any of ``sources`` may not import a module under any of ``forbidden``.

    A name matches a prefix when it is the prefix or a submodule of it; a prefix ending in
    ``*`` matches any name that starts with the rest (``autosched.cli*``: ``cli`` and any
    ``cli_...`` module).
    """

    sources: tuple[str, ...]
    forbidden: tuple[str, ...]
    why: str


RULES = [
    Rule(
        ("autosched",),
        ("services", "workers"),
        "the library does not import the processes built on it",
    ),
    Rule(("services",), ("workers",), "the API/scheduler and the workers are independent"),
    Rule(("workers",), ("services",), "the workers and the API/scheduler are independent"),
    Rule(
        ("autosched.service",),
        ("autosched.client", "autosched.cli*"),
        "the service layer does not import its client or the CLI",
    ),
    Rule(
        ("autosched.tune",),
        ("autosched.service", "autosched.db", "autosched.client"),
        "the tuning engine does not import the service, its database or the client",
    ),
    Rule(
        tuple(SCHEDULING),
        tuple(HIGHER_THAN_SCHEDULING),
        "scheduling and the wire format do not import the layers built on them",
    ),
    Rule(
        ("autosched.wire",),
        ("autosched.analysis", "autosched.templates", "autosched.schedule"),
        "the wire format does not import the scheduling layer",
    ),
]


def within(name: str, prefix: str) -> bool:
    if prefix.endswith("*"):
        return name.startswith(prefix[:-1])
    return name == prefix or name.startswith(prefix + ".")


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str  # the importing module
    targets: tuple[str, ...]  # what it imports: ``m`` and, for ``from m import x``, ``m.x``


def module_name(path: Path, package: str, package_dir: Path) -> str:
    parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


_IMPORT_FUNCTIONS = {"import_module", "__import__"}


def imports_of(path: Path, module: str) -> Iterator[Import]:
    """Every module ``path`` (the module ``module``) imports, anywhere in its body."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, module, (alias.name,))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = _resolve_relative(module, is_package, node.level, node.module)
            # ``from autosched import client`` imports a module: ``autosched.client``.
            names = [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
            yield Import(path, node.lineno, module, (base, *names))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if (
                called in _IMPORT_FUNCTIONS
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                yield Import(path, node.lineno, module, (first.value,))


def all_imports(package_dirs: dict[str, Path]) -> Iterator[Import]:
    for package, package_dir in package_dirs.items():
        for path in sorted(package_dir.rglob("*.py")):
            yield from imports_of(path, module_name(path, package, package_dir))


def violations(package_dirs: dict[str, Path], root: Path) -> list[str]:
    """One ``file:line: module imports target (why)`` per import that breaks a rule."""
    found = []
    for imp in all_imports(package_dirs):
        for rule in RULES:
            if not any(within(imp.module, s) for s in rule.sources):
                continue
            bad = [t for t in imp.targets if any(within(t, f) for f in rule.forbidden)]
            if bad:
                where = imp.path.relative_to(root)
                found.append(f"{where}:{imp.line}: {imp.module} imports {bad[0]} ({rule.why})")
    return sorted(set(found))


def test_imports_point_one_way() -> None:
    assert all(d.is_dir() for d in PACKAGE_DIRS.values()), PACKAGE_DIRS
    found = violations(PACKAGE_DIRS, ROOT)
    assert not found, "forbidden import directions:\n" + "\n".join(found)


def test_the_walk_sees_every_package() -> None:
    modules = {imp.module for imp in all_imports(PACKAGE_DIRS)}
    for expected in ("autosched.cli", "autosched.tune.tune", "services.api.app", "workers.main"):
        assert expected in modules


#: Modules the client, the bench scripts and the dashboard share with the server: what they
#: may import from the library (nothing heavier: no SQLAlchemy, no TVM).
STANDALONE = {"autosched.vocabulary": set(), "autosched.schemas": {"autosched.vocabulary"}}


def test_shared_vocabulary_stands_alone() -> None:
    found = []
    for imp in all_imports({"autosched": PACKAGE_DIRS["autosched"]}):
        allowed = STANDALONE.get(imp.module)
        if allowed is None:
            continue
        base = imp.targets[0]
        if within(base, "autosched") and not any(within(base, a) for a in allowed):
            found.append(f"{imp.path.relative_to(ROOT)}:{imp.line}: {imp.module} imports {base}")
    assert not found, "\n".join(found)
    code = (
        "import sys, autosched.schemas, autosched.vocabulary\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'tvm', 'celery'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_tests_do_not_import_each_other() -> None:
    """Shared test helpers live in ``*_support.py`` / ``kernels.py``, not in test modules."""
    tests_dir = ROOT / "tests"
    found = [
        f"{imp.path.relative_to(ROOT)}:{imp.line}: imports {imp.targets[0]}"
        for path in sorted(tests_dir.rglob("*.py"))
        for imp in imports_of(path, module_name(path, "tests", tests_dir))
        if any(t.split(".")[-1].startswith("test_") for t in imp.targets[:1])
    ]
    assert not found, "\n".join(found)


@pytest.fixture
def planted(tmp_path: Path) -> dict[str, Path]:
    """A small tree that breaks the rules in every way the walk must notice."""
    files = {
        "common/autosched/__init__.py": "",
        "common/autosched/wire/__init__.py": "from autosched import analysis\n",
        "common/autosched/tune/__init__.py": "",
        "common/autosched/tune/search.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from autosched.db.models import Trial\n"
            "def f():\n"
            "    from ..service import jobs\n"
        ),
        "common/autosched/service/__init__.py": "",
        "common/autosched/service/view.py": (
            "import importlib\ndef g():\n    return importlib.import_module('autosched.client')\n"
        ),
        "common/autosched/cli.py": "def h():\n    import services.api.app\n",
        "common/autosched/fine.py": "from autosched.service import schemas\nimport json\n",
        "services/__init__.py": "",
        "services/main.py": "__import__('workers.tasks')\n",
        "workers/__init__.py": "",
        "workers/main.py": "from autosched.service.dispatch import device_queue\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return {
        "autosched": tmp_path / "common" / "autosched",
        "services": tmp_path / "services",
        "workers": tmp_path / "workers",
    }


def test_the_walk_catches_planted_violations(planted: dict[str, Path]) -> None:
    root = planted["services"].parent
    found = violations(planted, root)
    where = sorted(v.split(": ", 1)[0] for v in found)
    assert where == [
        "common/autosched/cli.py:2",  # a library module importing a process, in a function
        "common/autosched/service/view.py:3",  # importlib.import_module of the client
        "common/autosched/tune/search.py:3",  # the database, under TYPE_CHECKING
        "common/autosched/tune/search.py:5",  # the service layer, by a relative import
        "common/autosched/wire/__init__.py:1",  # ``from autosched import analysis``
        "services/main.py:1",  # __import__ of the workers
    ], found
    assert any("autosched.tune.search imports autosched.service (" in v for v in found)
