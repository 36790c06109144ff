"""docker-compose.yaml, Dockerfile and .dockerignore, checked statically (no Docker engine runs here)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from extproc.config import load_config
from tests.e2e.harness import envoy_binary, envoy_validate

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


def test_dockerfile_copies_what_exists_and_is_not_ignored() -> None:
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for op, args in instructions():
        if op != "COPY" or args.startswith("--from"):
            continue
        *sources, _target = shlex.split(args)
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert source not in ignored, f"COPY {source}: excluded by .dockerignore"
