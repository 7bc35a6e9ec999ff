"""Deployment files: docker-compose.yml, docker/Dockerfile*, and the Kubernetes manifests.

All of it is checked offline: PyYAML for structure, the Kubernetes JSON schemas bundled with
``kubernetes-validate`` for the manifests (strict: unknown fields fail). ``docker compose
config`` and ``kubectl kustomize`` run only where those commands work on this machine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, latest_version

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = {
    "Dockerfile": ROOT / "docker" / "Dockerfile",
    "Dockerfile.gpu": ROOT / "docker" / "Dockerfile.gpu",
}
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"

# The ``autosched`` subcommands a deployment may run (the service's processes).
AUTOSCHED_SUBCOMMANDS = {"api", "scheduler", "worker", "db", "up"}
COMPOSE_SERVICES = {
    "api",
    "scheduler",
    "cpu-worker",
    "gpu-worker",
    "redis",
    "postgres",
    "flower",
    "migrate",
}
# Images built from this repository; every other image (postgres, redis) is upstream's.
PROJECT_IMAGES = {"autosched", "autosched-gpu"}
# Newest Kubernetes release whose schemas kubernetes-validate ships.
K8S_VERSION = latest_version()
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}


# --- helpers -------------------------------------------------------------------------------


def check_entry_point(argv: list[str], where: str) -> None:
    """Fail unless ``argv`` runs one of the project's own entry points."""
    assert argv, f"{where}: empty command"
    prog = argv[0]
    if prog == "autosched":
        assert len(argv) >= 2 and argv[1] in AUTOSCHED_SUBCOMMANDS, (
            f"{where}: `{shlex.join(argv)}` is not one of autosched {sorted(AUTOSCHED_SUBCOMMANDS)}"
        )
        if argv[1] == "worker":
            assert device_key_of(argv), f"{where}: a worker needs --device-key KEY"
        if argv[1] == "db":
            assert argv[2:3] == ["upgrade"], f"{where}: expected `autosched db upgrade`"
    elif prog == "celery":
        app = option_value(argv, "--app", "-A")
        assert app, f"{where}: celery without --app"
        module, _, attr = app.partition(":")
        parts = module.split(".")
        candidates = [
            ROOT.joinpath(*parts).with_suffix(".py"),
            ROOT.joinpath(*parts, "__init__.py"),
        ]
        source = next((p for p in candidates if p.is_file()), None)
        assert source is not None, f"{where}: celery app module {module!r} is not in the project"
        assert attr, f"{where}: --app {app!r} names no attribute"
        assert re.search(rf"^{re.escape(attr)}\b\s*[:=]", source.read_text(), re.M), (
            f"{where}: {source.relative_to(ROOT)} defines no {attr!r}"
        )
    else:
        pytest.fail(f"{where}: `{shlex.join(argv)}` runs no entry point of this project")


def option_value(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def device_key_of(argv: list[str]) -> str | None:
    return option_value(argv, "--device-key")


def as_argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


_COMPOSE_VAR = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def interpolate(value: Any) -> str:
    """Compose interpolation with every variable unset: ``${X:-default}`` -> ``default``."""
    text = str(value).replace("$$", "\0")
    return _COMPOSE_VAR.sub(lambda m: m.group(2) or "", text).replace("\0", "$")


def quantity(value: Any) -> float:
    """A Kubernetes resource quantity as a number (``500m`` -> 0.5, ``1Gi`` -> 2**30)."""
    units = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    units |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", str(value))
    assert match and match[2] in units, f"not a resource quantity: {value!r}"
    return float(match[1]) * units[match[2]]


def image_name(image: str) -> str:
    """``registry:5000/team/autosched:0.1.0`` -> ``autosched``."""
    last = image.rsplit("/", 1)[-1]
    return last.split("@", 1)[0].split(":", 1)[0]


# --- docker-compose.yml --------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def app_services(services) -> dict[str, dict[str, Any]]:
    """The services that run an image built from this repository."""
    return {name: svc for name, svc in services.items() if "build" in svc}


def service_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: interpolate(value) for key, value in env.items()}


def build_dockerfile(svc: dict[str, Any]) -> Path:
    build = svc["build"]
    if isinstance(build, str):
        build = {"context": build}
    context = ROOT / build.get("context", ".")
    return context / build.get("dockerfile", "Dockerfile")


def test_compose_has_every_service(services):
    missing = COMPOSE_SERVICES - set(services)
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


def test_cpu_worker_can_scale(services):
    worker = services["cpu-worker"]
    assert "container_name" not in worker, "container_name blocks --scale cpu-worker=N"
    assert "hostname" not in worker
    for port in worker.get("ports", []):
        if isinstance(port, dict):
            published = interpolate(port.get("published", ""))
        else:  # [HOST_IP:][HOST_PORT:]CONTAINER_PORT; an empty HOST_PORT is ephemeral
            parts = interpolate(port).split(":")
            published = parts[-2] if len(parts) >= 2 else ""
        assert not published, f"cpu-worker publishes a fixed host port: {port!r}"


def test_gpu_worker_reserves_an_nvidia_gpu(services):
    gpu = services["gpu-worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and d.get("count") == 1
        for d in devices
    ), devices
    assert "gpu" in gpu.get("profiles", []), "gpu-worker must sit behind the gpu profile"
    assert build_dockerfile(gpu).name == "Dockerfile.gpu"
    # Everything else starts on a plain `docker compose up`, on machines without GPUs too.
    for name in COMPOSE_SERVICES - {"gpu-worker"}:
        assert not services[name].get("profiles"), f"{name} is hidden behind a profile"
        assert "deploy" not in services[name] or "devices" not in json.dumps(
            services[name]["deploy"]
        ), f"{name} reserves devices"


def test_compose_dockerfiles_exist(app_services):
    assert app_services, "no service builds an image from this repository"
    for name, svc in app_services.items():
        assert build_dockerfile(svc).is_file(), f"{name}: {build_dockerfile(svc)} does not exist"
        assert image_name(interpolate(svc["image"])) in PROJECT_IMAGES, name


def test_compose_commands_run_project_entry_points(app_services):
    for name, svc in app_services.items():
        assert "command" in svc, f"{name}: give the command explicitly"
        check_entry_point(as_argv(svc["command"]), f"compose service {name}")
    kinds = {as_argv(svc["command"])[1] for svc in app_services.values()}
    assert {"api", "scheduler", "worker", "db"} <= kinds


def test_compose_workers_device_keys(services):
    for name, key in (("cpu-worker", "cpu-x86"), ("gpu-worker", "gpu-0")):
        argv = as_argv(services[name]["command"])
        assert argv[:2] == ["autosched", "worker"] and device_key_of(argv) == key
        assert service_env(services[name]).get("AUTOSCHED_DEVICE_KEY") == key


def test_compose_flower(services):
    argv = as_argv(services["flower"]["command"])
    assert argv[0] == "celery" and "flower" in argv
    assert any(str(p).endswith("5555") for p in services["flower"]["ports"])
    # The image the flower service runs must carry the flower package.
    dockerfile = build_dockerfile(services["flower"]).read_text()
    assert re.search(r"pip install[^\n]*\bflower\b", dockerfile), "flower is not installed"


def test_compose_healthchecks(services):
    for name in ("api", "redis", "postgres"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    api_test = as_argv(services["api"]["healthcheck"]["test"])
    joined = " ".join(api_test)
    assert "/readyz" in joined and ":8000" in joined, api_test
    runner = api_test[1] if api_test[0] in ("CMD", "CMD-SHELL") else api_test[0]
    assert runner.split()[0] in ("python", "curl"), api_test
    if runner.startswith("curl"):
        assert "curl" in build_dockerfile(services["api"]).read_text(), "curl is not installed"
    assert "redis-cli" in str(services["redis"]["healthcheck"]["test"])
    assert "ping" in str(services["redis"]["healthcheck"]["test"])
    assert "pg_isready" in str(services["postgres"]["healthcheck"]["test"])


def test_compose_environment(compose, services, app_services):
    raw = COMPOSE_FILE.read_text()
    assert re.search(r"^x-autosched-env:\s*&", raw, re.M), "no x-autosched-env anchor"
    shared = {k: interpolate(v) for k, v in compose["x-autosched-env"].items()}
    assert {"DATABASE_URL", "REDIS_URL"} <= set(shared)

    pg_env = service_env(services["postgres"])
    for name, svc in app_services.items():
        env = service_env(svc)
        for key, value in shared.items():
            assert env.get(key) == value, f"{name}: {key} differs from x-autosched-env"
        db = urlsplit(env["DATABASE_URL"])
        assert db.scheme.startswith("postgresql") and db.hostname == "postgres", db
        assert (db.port or 5432) == 5432
        assert db.username == pg_env["POSTGRES_USER"], "DATABASE_URL user != POSTGRES_USER"
        assert db.password == pg_env["POSTGRES_PASSWORD"], "DATABASE_URL password mismatch"
        assert db.path.lstrip("/") == pg_env["POSTGRES_DB"]
        redis_url = urlsplit(env["REDIS_URL"])
        assert redis_url.scheme == "redis" and redis_url.hostname == "redis", redis_url

    api_env = service_env(services["api"])
    assert api_env.get("AUTOSCHED_API_HOST") == "0.0.0.0", "the API must listen beyond loopback"
    api_port = api_env.get("AUTOSCHED_API_PORT", "8000")
    container_ports = [
        interpolate(p).rsplit(":", 1)[-1].split("/")[0] for p in services["api"]["ports"]
    ]
    assert api_port in container_ports, (api_port, container_ports)


def test_compose_dependencies(services, app_services):
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if spec.get("condition") == "service_healthy":
                assert services[dep].get("healthcheck"), f"{dep} has no healthcheck"
    migrate = services["migrate"]
    assert as_argv(migrate["command"]) == ["autosched", "db", "upgrade"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "scheduler", "cpu-worker", "gpu-worker"):
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
    assert services["flower"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_restart_policies(services):
    for name, svc in services.items():
        if name == "migrate":
            assert str(svc.get("restart", "no")) in ("no", "on-failure"), "migrate is one-shot"
        else:
            assert svc.get("restart") in ("always", "unless-stopped", "on-failure"), name


def test_compose_named_volumes(compose, services):
    declared = set(compose.get("volumes") or {})
    assert declared, "no named volumes"
    used = set()
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            source = vol.get("source") if isinstance(vol, dict) else str(vol).split(":", 1)[0]
            if source and not source.startswith((".", "/", "~", "$")):
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    pg_mounts = [str(v) for v in services["postgres"]["volumes"]]
    assert any(
        m.split(":")[0] in declared and m.split(":")[1] == "/var/lib/postgresql/data"
        for m in pg_mounts
    ), "postgres data must live in a named volume"
    assert declared <= used, f"declared but unused volumes: {sorted(declared - used)}"


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [docker, "compose"] if probe.returncode == 0 else None


def test_docker_compose_config():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no working `docker compose` on this machine")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    for profile_args in ([], ["--profile", "gpu"]):
        result = subprocess.run(
            [*cli, "-f", str(COMPOSE_FILE), *profile_args, "config", "--quiet"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr


# --- Dockerfiles ---------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment and empty lines, inside continuations as well
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, rest = pending.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    return out


def copy_sources(args: str) -> list[str] | None:
    """Sources of a COPY/ADD; None when it copies from another stage or image."""
    parts = json.loads(args) if args.startswith("[") else shlex.split(args)
    flags = [p for p in parts if p.startswith("--")]
    if any(f.startswith("--from") for f in flags):
        return None
    paths = [p for p in parts if not p.startswith("--")]
    assert len(paths) >= 2, f"COPY needs a source and a destination: {args!r}"
    return paths[:-1]


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(rel: str) -> bool:
    """Whether .dockerignore keeps ``rel`` (a path relative to the context) out of the build."""
    if not DOCKERIGNORE.exists():
        return False
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = _dockerignore_regex(line.lstrip("!").strip("/"))
        # A pattern that excludes a directory excludes all that is under it.
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def _is_build_junk(path: Path) -> bool:
    return (
        "__pycache__" in path.parts
        or path.suffix in (".pyc", ".pyo", ".so")
        or any(p.endswith(".egg-info") for p in path.parts)
    )


def test_dockerignore_helper():
    assert dockerignored(".venv/bin/python")
    assert dockerignored("common/autosched/__pycache__/x.cpython-311.pyc")
    assert not dockerignored("common/autosched/__init__.py")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_copy_sources_exist(name):
    """The build context is the repository root (docker-compose.yml builds with context .)."""
    copies = [
        args for kw, args in dockerfile_instructions(DOCKERFILES[name]) if kw in ("COPY", "ADD")
    ]
    assert copies, f"{name} copies nothing"
    for args in copies:
        for source in copy_sources(args) or []:
            matches = sorted(ROOT.glob(source.lstrip("/"))) if source != "." else [ROOT]
            assert matches, f"{name}: COPY source {source!r} does not exist"
            for match in matches:
                rel = match.relative_to(ROOT).as_posix()
                assert rel == "." or not dockerignored(rel), f".dockerignore drops {rel}"
                files = [match] if match.is_file() else list(match.rglob("*"))
                for f in files:
                    frel = f.relative_to(ROOT)
                    if f.is_file() and not _is_build_junk(frel):
                        assert not dockerignored(frel.as_posix()), f".dockerignore drops {frel}"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_installs_the_project(name):
    instructions = dockerfile_instructions(DOCKERFILES[name])
    runs = [args for kw, args in instructions if kw == "RUN"]
    installs = []
    for run in runs:
        lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token not in ("&&", "||", ";", "|"):
                command.append(token)
                continue
            if "pip" in command and "install" in command:
                installs.append(command[command.index("install") + 1 :])
            command = []
    project = [a for a in installs if any(re.fullmatch(r"\.(\[[\w,-]+\])?", t) for t in a)]
    assert project, f"{name}: no `pip install .`"
    argv = project[-1]
    # Editable on purpose: autosched.db.session finds the Alembic scripts at
    # <source root>/migrations, which a site-packages install would not carry.
    assert "-e" in argv or "--editable" in argv, f"{name}: install the project editable"
    copied = {
        s.rstrip("/") for kw, a in instructions if kw == "COPY" for s in copy_sources(a) or []
    }
    assert "migrations" in copied, f"{name}: migrations/ is not in the image"
    if "--no-deps" in argv:
        # Then the dependencies come from pyproject.toml in an earlier step.
        assert any("pyproject.toml" in r and "pip install -r" in r for r in runs), name
    # TVM links the kernels it builds with the system C++ compiler.
    assert any(re.search(r"\b(build-essential|g\+\+)\b", r) for r in runs), f"{name}: no g++"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_runs_as_non_root(name):
    users = [args for kw, args in dockerfile_instructions(DOCKERFILES[name]) if kw == "USER"]
    assert users, f"{name} runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # Numeric, so the kubelet can check runAsNonRoot against the image.
    assert user.isdigit(), f"{name}: USER {user} should be numeric"


def test_dockerfile_base_images():
    cpu = dockerfile_instructions(DOCKERFILES["Dockerfile"])
    assert next(a for k, a in cpu if k == "FROM").startswith("python:3.11-slim")
    gpu = dockerfile_instructions(DOCKERFILES["Dockerfile.gpu"])
    args = dict(a.split("=", 1) for k, a in gpu if k == "ARG" and "=" in a)
    base = re.sub(
        r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), next(a for k, a in gpu if k == "FROM")
    )
    assert base.startswith("nvidia/cuda:") and "ubuntu22.04" in base, base
    assert any(k == "RUN" and "python3.11" in a for k, a in gpu), "no Python 3.11"


# --- Kubernetes manifests ------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.glob("*.y*ml") if p != KUSTOMIZATION)


def load_manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


MANIFESTS = load_manifests()


def _id(item: tuple[str, dict[str, Any]]) -> str:
    return f"{item[0]}:{item[1].get('kind')}/{item[1].get('metadata', {}).get('name')}"


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in MANIFESTS if d["kind"] == kind}


def workloads() -> list[dict[str, Any]]:
    return [d for _, d in MANIFESTS if d["kind"] in WORKLOAD_KINDS]


def pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_template(workload)["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def is_project_container(container: dict[str, Any]) -> bool:
    return image_name(container["image"]) in PROJECT_IMAGES


def env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the network fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_manifests_found():
    assert len(manifest_files()) >= 8
    assert not (DEPLOY / ".gitkeep").exists()
    kinds = {d["kind"] for _, d in MANIFESTS}
    assert {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "StatefulSet",
        "Job",
    } <= kinds


@pytest.mark.parametrize("item", MANIFESTS, ids=_id)
def test_manifest_matches_kubernetes_schema(item, no_network):
    filename, doc = item
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except SchemaNotFoundError as e:
        pytest.fail(f"{filename}: {e.message}")
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        pytest.fail(f"{filename} {_id(item)}: {path}: {e.message}")


def test_validator_is_strict_and_offline(no_network):
    good = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}}
    kubernetes_validate.validate(good, K8S_VERSION, strict=True)
    typo = {**good, "dta": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    assert set(listed) == {p.name for p in manifest_files()}
    namespaces = objects("Namespace")
    assert kustomization["namespace"] in namespaces
    for _, doc in MANIFESTS:
        if doc["kind"] not in CLUSTER_SCOPED_KINDS:
            assert doc["metadata"].get("namespace") == kustomization["namespace"], _id(("", doc))
    images = {i["name"] for i in kustomization.get("images", [])}
    used = {image_name(c["image"]) for w in workloads() for c in containers(w)}
    assert images >= PROJECT_IMAGES, "kustomization.yaml does not pin the project's images"
    assert used >= PROJECT_IMAGES


def test_kustomize_build():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    try:
        result = subprocess.run(
            [kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"kubectl kustomize unavailable: {e}")
    if result.returncode != 0 and "unknown command" in result.stderr:
        pytest.skip("this kubectl has no kustomize")
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(rendered) == len(MANIFESTS)
    for doc in rendered:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "autosched"


def test_every_container_has_resources():
    for workload in workloads():
        for c in containers(workload):
            where = f"{workload['metadata']['name']}/{c['name']}"
            requests = c.get("resources", {}).get("requests", {})
            limits = c.get("resources", {}).get("limits", {})
            for res in ("cpu", "memory"):
                assert res in requests, f"{where}: no {res} request"
                assert res in limits, f"{where}: no {res} limit"
                assert quantity(requests[res]) <= quantity(limits[res]), f"{where}: {res}"


def test_serving_containers_have_probes():
    for workload in workloads():
        for c in containers(workload):
            if not c.get("ports"):
                continue
            where = f"{workload['metadata']['name']}/{c['name']}"
            ports = {p.get("name") for p in c["ports"]} | {p["containerPort"] for p in c["ports"]}
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in c, f"{where}: no {probe}"
                for handler in ("httpGet", "tcpSocket"):
                    if handler in c[probe]:
                        assert c[probe][handler]["port"] in ports, f"{where}: {probe} port"


def test_api_probes():
    (api,) = containers(objects("Deployment")["api"])
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api.get("startupProbe", {}).get("httpGet", {}).get("path", "/healthz") == "/healthz"
    port = {p["name"]: p["containerPort"] for p in api["ports"]}["http"]
    env = {e["name"]: e.get("value") for e in api.get("env", [])}
    config = objects("ConfigMap")["autosched-config"]["data"]
    assert str(port) == str(env.get("AUTOSCHED_API_PORT", config["AUTOSCHED_API_PORT"]))
    assert env.get("AUTOSCHED_API_HOST", config["AUTOSCHED_API_HOST"]) == "0.0.0.0"


def test_services_select_their_workloads():
    for name, service in objects("Service").items():
        selector = service["spec"]["selector"]
        assert selector, f"service {name} selects nothing"
        targets = [
            w
            for w in workloads()
            if selector.items() <= pod_template(w)["metadata"]["labels"].items()
        ]
        assert len(targets) == 1, (
            f"service {name} selects {[w['metadata']['name'] for w in targets]}"
        )
        port_names = {p.get("name") for c in containers(targets[0]) for p in c.get("ports", [])} | {
            p["containerPort"] for c in containers(targets[0]) for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port.get("targetPort", port["port"]) in port_names, f"service {name}: {port}"
    api_service = objects("Service")["api"]
    api_labels = pod_template(objects("Deployment")["api"])["metadata"]["labels"]
    assert api_service["spec"]["selector"].items() <= api_labels.items()


def test_workload_selectors_match_their_templates():
    for workload in workloads():
        if workload["kind"] in ("Job", "CronJob"):
            continue
        match = workload["spec"]["selector"]["matchLabels"]
        assert match.items() <= pod_template(workload)["metadata"]["labels"].items()


def test_scheduler_and_worker_replicas():
    deployments = objects("Deployment")
    scheduler = deployments["scheduler"]["spec"]
    assert scheduler["replicas"] == 1 and scheduler["strategy"]["type"] == "Recreate"
    assert deployments["cpu-worker"]["spec"]["replicas"] == 2


def test_gpu_worker_requests_a_gpu():
    gpu = objects("Deployment")["gpu-worker"]
    (worker,) = containers(gpu)
    assert quantity(worker["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert image_name(worker["image"]) == "autosched-gpu"
    spec = pod_template(gpu)["spec"]
    assert spec.get("nodeSelector") or spec.get("affinity"), "no GPU node placement example"
    assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", []))
    for workload in workloads():
        if workload is gpu:
            continue
        for c in containers(workload):
            assert "nvidia.com/gpu" not in json.dumps(c.get("resources", {})), c["name"]


def test_project_containers_run_project_entry_points():
    for workload in workloads():
        spec = pod_template(workload)["spec"]
        for c in containers(workload):
            if not is_project_container(c):
                continue
            where = f"{workload['metadata']['name']}/{c['name']}"
            argv = c.get("command", []) + c.get("args", [])
            check_entry_point(argv, where)
            # Service links would inject variables such as API_PORT=tcp://... into the pod.
            assert spec.get("enableServiceLinks") is False, f"{where}: enableServiceLinks"
            needed = {"DATABASE_URL"} if argv[1] == "db" else {"DATABASE_URL", "REDIS_URL"}
            assert needed <= env_names(c), f"{where}: missing {needed - env_names(c)}"
            if argv[1] == "worker":
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                assert env.get("AUTOSCHED_DEVICE_KEY") == device_key_of(argv), where
                cpus = quantity(c["resources"]["limits"]["cpu"])
                assert env.get("TVM_NUM_THREADS") == str(int(cpus)), f"{where}: threads != CPUs"
    job = objects("Job")["migrate"]
    assert [c["command"] for c in containers(job)] == [["autosched", "db", "upgrade"]]
    assert pod_template(job)["spec"]["restartPolicy"] in ("OnFailure", "Never")


def test_pods_meet_the_restricted_pod_security_standard():
    allowed_volumes = {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
    for workload in workloads():
        spec = pod_template(workload)["spec"]
        name = workload["metadata"]["name"]
        pod_sc = spec.get("securityContext", {})
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), name
        for volume in spec.get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= allowed_volumes, f"{name}: volume {volume}"
        for c in containers(workload):
            sc = c.get("securityContext", {})
            where = f"{name}/{c['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert not sc.get("privileged"), where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert not any(p.get("hostPort") for p in c.get("ports", [])), where
    labels = objects("Namespace")["autosched"]["metadata"]["labels"]
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted"


def test_config_and_secret_references_resolve():
    configmaps = {n: set(d.get("data", {})) for n, d in objects("ConfigMap").items()}
    secrets = {
        n: set(d.get("stringData", {})) | set(d.get("data", {}))
        for n, d in objects("Secret").items()
    }
    for workload in workloads():
        for c in containers(workload):
            where = f"{workload['metadata']['name']}/{c['name']}"
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps, where
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, where
            for env in c.get("env", []):
                ref = env.get("valueFrom", {})
                for key, known in (("configMapKeyRef", configmaps), ("secretKeyRef", secrets)):
                    if key in ref:
                        name, item = ref[key]["name"], ref[key]["key"]
                        assert name in known and item in known[name], f"{where}: {name}.{item}"


def test_urls_point_at_the_bundled_services():
    secret = objects("Secret")["autosched-secrets"]["stringData"]
    service_ports = {
        name: {p["port"] for p in svc["spec"]["ports"]} for name, svc in objects("Service").items()
    }
    db = urlsplit(secret["DATABASE_URL"])
    assert db.scheme == "postgresql+psycopg"
    assert db.hostname in service_ports and (db.port or 5432) in service_ports[db.hostname]
    assert db.username == secret["POSTGRES_USER"]
    assert db.password == secret["POSTGRES_PASSWORD"], "DATABASE_URL password != POSTGRES_PASSWORD"
    assert db.path.lstrip("/") == secret["POSTGRES_DB"]
    redis_url = urlsplit(secret["REDIS_URL"])
    assert redis_url.scheme == "redis" and redis_url.hostname in service_ports
    assert (redis_url.port or 6379) in service_ports[redis_url.hostname]
    api_url = urlsplit(objects("ConfigMap")["autosched-config"]["data"]["AUTOSCHED_API_URL"])
    assert api_url.hostname == "api" and api_url.port in service_ports["api"]


def test_postgres_statefulset():
    postgres = objects("StatefulSet")["postgres"]
    spec = postgres["spec"]
    assert spec["serviceName"] in objects("Service")
    claims = {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    (container,) = containers(postgres)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert claims & set(mounts), "the PVC template is not mounted"
    pgdata = {e["name"]: e.get("value") for e in container["env"]}.get("PGDATA", "")
    assert any(pgdata.startswith(mounts[c] + "/") for c in claims & set(mounts)), pgdata


# --- the broker: persistence, password, who may reach it -----------------------------------


def _flag(argv: list[str], name: str) -> str | None:
    """The value after ``--name`` in a redis-server command line."""
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else None


def test_compose_redis_persists_and_requires_a_password(compose, services, app_services):
    redis = services["redis"]
    argv = [interpolate(a) for a in as_argv(redis["command"])]
    assert argv[0] == "redis-server"
    assert _flag(argv, "--appendonly") == "yes", "the queues must survive a restart"
    assert _flag(argv, "--appendfsync") == "everysec"
    mounts = [str(v).split(":") for v in redis["volumes"]]
    assert any(src in (compose.get("volumes") or {}) and dst == "/data" for src, dst in mounts)
    assert not redis.get("ports"), "Redis is reached on the compose network only"

    password = _flag(argv, "--requirepass")
    assert password, "Redis without a password"
    assert "${REDIS_PASSWORD" in str(redis["command"]), "the password comes from REDIS_PASSWORD"
    for name, svc in app_services.items():
        url = urlsplit(service_env(svc)["REDIS_URL"])
        assert url.password == password, f"{name}: REDIS_URL does not carry the password"
    # The healthcheck's redis-cli authenticates (else PING answers NOAUTH and never PONG).
    assert service_env(redis).get("REDISCLI_AUTH") == password or "-a" in as_argv(
        redis["healthcheck"]["test"]
    )


def _container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in containers(workload) if c["name"] == name)


def _secret_env(container: dict[str, Any], name: str) -> tuple[str, str] | None:
    for env in container.get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if env["name"] == name and ref:
            return ref["name"], ref["key"]
    return None


def test_redis_persists_on_a_volume():
    redis = objects("Deployment")["redis"]
    assert redis["spec"]["strategy"]["type"] == "Recreate", "one pod at a time on the volume"
    container = _container(redis, "redis")
    argv = container.get("command", []) + container.get("args", [])
    assert _flag(argv, "--appendonly") == "yes" and _flag(argv, "--appendfsync") == "everysec"
    data = next(m for m in container["volumeMounts"] if m["mountPath"] == "/data")
    (volume,) = [v for v in pod_template(redis)["spec"]["volumes"] if v["name"] == data["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    pvc = objects("PersistentVolumeClaim")[claim]
    assert "ReadWriteOnce" in pvc["spec"]["accessModes"]
    assert quantity(pvc["spec"]["resources"]["requests"]["storage"]) >= 2**30


def test_redis_requires_the_secret_password():
    secret = objects("Secret")["autosched-secrets"]["stringData"]
    assert secret.get("REDIS_PASSWORD"), "no REDIS_PASSWORD in the secret"
    assert urlsplit(secret["REDIS_URL"]).password == secret["REDIS_PASSWORD"], (
        "REDIS_URL password != REDIS_PASSWORD"
    )
    container = _container(objects("Deployment")["redis"], "redis")
    argv = container.get("command", []) + container.get("args", [])
    password_var = _flag(argv, "--requirepass")
    assert password_var and re.fullmatch(r"\$\((\w+)\)", password_var), argv
    source = ("autosched-secrets", "REDIS_PASSWORD")
    assert _secret_env(container, password_var[2:-1]) == source
    assert _secret_env(container, "REDISCLI_AUTH") == source, "the probes' redis-cli cannot log in"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _using(variable: str) -> set[str]:
    """The workloads whose containers are given ``variable`` (so connect to that server)."""
    return {
        w["metadata"]["name"]
        for w in workloads()
        if any(variable in env_names(c) for c in containers(w))
    }


@pytest.mark.parametrize(
    ("server", "variable", "port"),
    [("redis", "REDIS_URL", 6379), ("postgres", "DATABASE_URL", 5432)],
)
def test_network_policy_admits_only_the_servers_clients(server, variable, port):
    (target,) = [w for w in workloads() if w["metadata"]["name"] == server]
    server_labels = pod_template(target)["metadata"]["labels"]
    policies = [
        p
        for p in objects("NetworkPolicy").values()
        if _selects(p["spec"]["podSelector"], server_labels)
    ]
    assert policies, f"no NetworkPolicy selects the {server} pod"
    admitted: set[str] = set()
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            assert peers, f"{policy['metadata']['name']}: a rule without `from` admits anyone"
            for peer in peers:
                assert set(peer) == {"podSelector"}, f"only pods of this namespace: {peer}"
                assert peer["podSelector"], "an empty podSelector admits every pod"
                admitted |= {
                    w["metadata"]["name"]
                    for w in workloads()
                    if _selects(peer["podSelector"], pod_template(w)["metadata"]["labels"])
                }
            assert [p["port"] for p in rule.get("ports", [])] == [port], rule
    assert admitted == _using(variable), f"{server} admits {sorted(admitted)}"
    assert {"api", "scheduler", "cpu-worker", "gpu-worker"} <= admitted
    assert server not in admitted and "redis" not in admitted
