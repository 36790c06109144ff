"""docker-compose.yaml, Dockerfile and .dockerignore, checked statically (no Docker engine runs here)."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from extproc.config import load_config
from extproc.deploy import demo_bundle
from support.envoy import envoy_binary, envoy_validate

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def envoy_version() -> str:
    out = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"version: [0-9a-f]+/(\d+\.\d+\.\d+)/", out)
    assert found is not None, out
    return found.group(1)


def volumes(service: str) -> dict[PurePosixPath, Path]:
    """Container path -> host path of a service's bind mounts."""
    mounts: dict[PurePosixPath, Path] = {}
    for entry in SERVICES[service].get("volumes", []):
        source, target, *_ = entry.split(":")
        mounts[PurePosixPath(target)] = (REPO / source).resolve()
    return mounts


def host_path(service: str, container_path: str) -> Path:
    """Where a container path of ``service`` comes from on the host, through its bind mounts."""
    path = PurePosixPath(container_path)
    for target, source in volumes(service).items():
        if path == target or target in path.parents:
            return source / path.relative_to(target)
    raise AssertionError(f"{container_path} is not under any volume of service {service!r}")


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def envoy_config() -> dict[str, Any]:
    command: list[str] = SERVICES["envoy"]["command"]
    document: dict[str, Any] = yaml.safe_load(host_path("envoy", option(command, "-c")).read_text())
    return document


def cluster_address(name: str) -> tuple[str, int]:
    cluster = next(c for c in envoy_config()["static_resources"]["clusters"] if c["name"] == name)
    socket = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert cluster["type"] == "STRICT_DNS", "service names need DNS (and STRICT_DNS validates without resolving)"
    return socket["address"], socket["port_value"]


def test_services_and_references() -> None:
    assert set(SERVICES) == {"envoy", "extproc", "upstream"}
    for name, service in SERVICES.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in SERVICES, f"{name} depends on unknown service {dependency}"
    assert SERVICES["envoy"]["depends_on"]["extproc"]["condition"] == "service_healthy"
    # The upstream runs the image the extproc service builds.
    assert SERVICES["extproc"]["build"] == "."
    assert SERVICES["upstream"]["image"] == SERVICES["extproc"]["image"]


def test_envoy_image_is_the_tested_version() -> None:
    assert SERVICES["envoy"]["image"] == f"envoyproxy/envoy:v{envoy_version()}"


def test_every_mounted_file_exists() -> None:
    for service in SERVICES:
        for target, source in volumes(service).items():
            assert source.exists(), f"{service}: {source} (mounted at {target}) does not exist"


def test_envoy_config_agrees_with_the_services() -> None:
    document = envoy_config()
    listener = document["static_resources"]["listeners"][0]["address"]["socket_address"]
    admin = document["admin"]["address"]["socket_address"]
    assert listener["address"] == admin["address"] == "0.0.0.0"  # reachable through the published ports
    published = [str(p).rsplit(":", 1)[-1] for p in SERVICES["envoy"]["ports"]]
    assert str(listener["port_value"]) in published
    assert str(admin["port_value"]) in published

    extproc_host, extproc_port = cluster_address("extproc")
    assert extproc_host == "extproc"
    assert port_of(option(SERVICES["extproc"]["command"], "--listen")) == extproc_port
    assert str(extproc_port) in SERVICES["extproc"]["expose"]

    upstream_host, upstream_port = cluster_address("upstream")
    assert upstream_host == "upstream"
    assert port_of(option(SERVICES["upstream"]["command"], "--listen")) == upstream_port
    assert str(upstream_port) in SERVICES["upstream"]["expose"]
    assert f"'127.0.0.1', {upstream_port}" in " ".join(SERVICES["upstream"]["healthcheck"]["test"])


def test_server_config_and_its_plugins_are_mounted() -> None:
    command: list[str] = SERVICES["extproc"]["command"]
    config_path = host_path("extproc", option(command, "--config"))
    config = load_config(config_path)  # plugin paths resolve, relative to the config file, on the host
    # The image's /app mirrors the repository, so the config's relative plugin paths hold inside it too.
    app = PurePosixPath("/app")
    container_config = PurePosixPath(option(command, "--config"))
    assert host_path("extproc", str(container_config)) == REPO / container_config.relative_to(app)
    for spec in config.plugins:
        inside = app / spec.path.relative_to(REPO)
        assert host_path("extproc", str(inside)) == spec.path, spec.name
    # Committed, not build output: a fresh clone runs the stack (and `make demo`) without Node.
    plugin_files = [str(spec.path.relative_to(REPO)) for spec in config.plugins]
    tracked = subprocess.run(
        ["git", "ls-files", "--", *plugin_files], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(tracked) == sorted(set(plugin_files))


@pytest.mark.e2e
def test_envoy_accepts_the_compose_config(tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(envoy_config()))
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Dockerfile -------------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    steps = instructions()
    bases = [args for op, args in steps if op == "FROM"]
    assert len(bases) >= 2
    assert all(base.split()[0] == "python:3.11-slim" for base in bases)
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1] not in ("0", "root")
    assert any(op == "HEALTHCHECK" for op, _ in steps)
    exposed = [args for op, args in steps if op == "EXPOSE"]
    assert exposed == [str(port_of(option(SERVICES["extproc"]["command"], "--listen")))]
    assert next(args for op, args in steps if op == "ENTRYPOINT") == '["extproc"]'


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, in order."""
    found: list[list[tuple[str, str]]] = []
    for op, args in instructions():
        if op == "FROM":
            found.append([])
        found[-1].append((op, args))
    return found


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` (or a folder holding it) out of the build context. fnmatch's `*`
    also crosses `/`, unlike Docker's: when in doubt this says excluded, which fails the test below."""
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in ("", "#")
    ]
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
        for pattern in patterns
        for prefix in prefixes
    )


def test_no_layer_holds_the_source_or_the_wheels() -> None:
    build, runtime = stages()
    # Sources and wheels come in through bind mounts (BuildKit), which leave nothing in a layer.
    assert DOCKERFILE.startswith("# syntax=docker/dockerfile:1\n")
    for op, args in build + runtime:
        assert op not in ("COPY", "ADD"), f"{op} {args}: would put files in a layer; mount them instead"
        assert "rm -rf /wheels" not in args
    wheels = next(args for op, args in build if op == "RUN" and "pip wheel" in args)
    assert wheels.startswith("--mount=type=bind,target=/src,rw ")
    assert "--wheel-dir /wheels /src" in wheels
    install = next(args for op, args in runtime if op == "RUN" and "pip install" in args)
    assert install.startswith("--mount=type=bind,from=build,source=/wheels,target=/wheels ")
    assert "--no-index --find-links /wheels extism-extproc" in install


def test_the_build_context_has_what_the_wheel_is_built_from() -> None:
    needed = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "extproc/cli.py"]
    needed += [str(path) for path in demo_bundle.bundle_files(REPO)]
    excluded = [path for path in needed if dockerignore_excludes(path)]
    assert not excluded, f".dockerignore keeps these out of the build: {excluded}"
    for stale in ("build/lib/extproc/cli.py", "extism_extproc.egg-info/PKG-INFO", ".venv/bin/python"):
        assert dockerignore_excludes(stale), stale


def test_one_image_name_everywhere() -> None:
    # What the Dockerfile's comment builds is what compose runs, Kubernetes deploys and the docs load into kind.
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    image = f"extism-extproc:{version}"
    assert f"docker build -t {image} ." in DOCKERFILE
    assert SERVICES["extproc"]["image"] == SERVICES["upstream"]["image"] == image
    manifests = list(yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "extproc.yaml").read_text()))
    deployment = next(doc for doc in manifests if doc["kind"] == "Deployment")
    assert [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]] == [image]
    mesh_doc = (REPO / "docs" / "service-mesh.md").read_text()
    assert f"docker build -t {image} ." in mesh_doc
    assert f"kind load docker-image {image}" in mesh_doc
    named = DOCKERFILE + (REPO / "docker-compose.yaml").read_text() + mesh_doc
    tags = set(re.findall(r"extism-extproc:[\w.-]+", named))
    assert tags == {image}, tags
