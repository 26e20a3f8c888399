"""The files in deploy/ parse, and every command they run exists with the flags they pass.

Docker and a Kubernetes cluster are not needed: compose and manifests are
parsed as YAML (and built with ``kubectl kustomize`` where kubectl is
installed), systemd units with ``systemd-analyze verify`` where present (else
as INI), and each ``tuneback ...`` invocation is checked against the real
command line.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from tests.live import tuneback_env
from tuneback.cli import cli

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PRESTART = "/opt/tuneback/deploy/prestart.sh"
VENV_BIN = "/opt/tuneback/.venv/bin/tuneback"


def check_tuneback(args: list[str]) -> None:
    """``tuneback ARGS`` names a real command, and each ``--flag`` in ARGS is one of its options."""
    words = [a for a in args if not a.startswith("-")]
    command: click.Command = cli
    path = []
    for word in words:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        command, path = command.commands[word], [*path, word]
    assert path, f"no tuneback command in {args}"
    assert not isinstance(command, click.Group), f"`tuneback {' '.join(path)}` needs a subcommand"
    helped = CliRunner().invoke(cli, [*path, "--help"])
    assert helped.exit_code == 0, helped.output
    options = {opt for param in command.params for opt in param.opts}
    flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    assert flags <= options, f"`tuneback {' '.join(path)}` has no {flags - options}"


def check_prestart(args: list[str]) -> None:
    assert args[0] in (PRESTART, "deploy/prestart.sh"), args
    assert set(args[1:]) <= {"--model"}, args


def test_every_command_in_prestart_exists():
    script = (DEPLOY / "prestart.sh").read_text()
    assert os.access(DEPLOY / "prestart.sh", os.X_OK)
    assert subprocess.run(["sh", "-n", str(DEPLOY / "prestart.sh")], check=False).returncode == 0
    calls = [shlex.split(line)[1:] for line in script.splitlines() if '"$TUNEBACK"' in line]
    assert [c[:2] for c in calls] == [["db", "wait"], ["db", "upgrade"], ["model", "prepare"]]
    for call in calls:
        check_tuneback([a for a in call if "$" not in a])


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_runs_the_topology_with_commands_that_exist():
    services = compose()["services"]
    assert set(services) == {
        "postgres",
        "redis",
        "migrate",
        "api",
        "serve-1",
        "serve-2",
        "scheduler",
    }
    ours = {name: s for name, s in services.items() if s.get("image") == "tuneback:latest"}
    assert set(ours) == {"migrate", "api", "serve-1", "serve-2", "scheduler"}
    for name, service in ours.items():
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        env = service["environment"]
        assert env["TUNEBACK_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert env["TUNEBACK_RATE_LIMIT_STORAGE"] == "redis://redis:6379"
        if "entrypoint" in service:
            check_prestart([*service["entrypoint"], *service["command"]])
        else:
            check_tuneback(service["command"])
        if name != "migrate":
            assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert {services[s]["environment"]["TUNEBACK_REPLICA_ID"] for s in ("serve-1", "serve-2")} == {
        "serve-1",
        "serve-2",
    }
    assert "PROMETHEUS_MULTIPROC_DIR" in services["api"]["environment"]


def test_the_dockerfile_copies_what_exists_and_runs_tuneback():
    text = (DEPLOY / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / source).exists(), source
    assert 'ENTRYPOINT ["tuneback"]' in text
    check_tuneback(yaml.safe_load(re.search(r"^CMD (.+)$", text, re.M).group(1)))


def unit_commands(unit: configparser.ConfigParser) -> list[list[str]]:
    lines = [unit["Service"].get("ExecStartPre"), unit["Service"]["ExecStart"]]
    return [shlex.split(line.replace("%i", "8001")) for line in lines if line]


@pytest.mark.parametrize(
    "name", ["tuneback-api.service", "tuneback-serve@.service", "tuneback-scheduler.service"]
)
def test_systemd_units_parse_and_name_commands_that_exist(name):
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(DEPLOY / "systemd" / name)
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    assert unit["Service"]["EnvironmentFile"] == "/etc/tuneback/tuneback.env"
    for command in unit_commands(unit):
        if command[0] == VENV_BIN:
            check_tuneback(command[1:])
        else:
            check_prestart(command)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_accepts_the_units(tmp_path):
    # The units' paths point at /opt/tuneback; point them at this checkout instead.
    venv = Path(sys.executable).parent.parent
    names = []
    for unit in (DEPLOY / "systemd").glob("*.service"):
        text = unit.read_text().replace("/opt/tuneback/.venv", str(venv))
        name = unit.name.replace("@.", "@8001.")
        (tmp_path / name).write_text(text.replace("/opt/tuneback", str(ROOT)))
        names.append(str(tmp_path / name))
    done = subprocess.run(
        ["systemd-analyze", "verify", *names], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "Unknown" not in done.stderr, done.stderr


def manifests() -> list[dict]:
    """Every Kubernetes object in deploy/k8s, the Kustomization last."""
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return sorted(docs, key=lambda d: d["kind"] == "Kustomization")


def test_kubernetes_manifests_parse_and_name_commands_that_exist():
    *objects, kustomization = manifests()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in objects}
    assert {
        ("Deployment", "tuneback-api"),
        ("StatefulSet", "tuneback-serve"),
        ("Deployment", "tuneback-scheduler"),
        ("Job", "tuneback-migrate"),
        ("PersistentVolumeClaim", "tuneback-data"),
    } <= kinds
    assert all((DEPLOY / "k8s" / r).is_file() for r in kustomization["resources"])
    containers = [
        c
        for d in objects
        if "template" in d.get("spec", {})
        for c in [*d["spec"]["template"]["spec"].get("initContainers", []),
                  *d["spec"]["template"]["spec"]["containers"]]
    ]  # fmt: skip
    assert len(containers) >= 7
    for container in containers:
        if "command" in container:
            check_prestart(container["command"])
        else:
            check_tuneback(container["args"])
    serve = next(d for d in objects if d["metadata"]["name"] == "tuneback-serve")
    assert serve["spec"]["replicas"] == 2
    scheduler = next(d for d in objects if d["metadata"]["name"] == "tuneback-scheduler")
    assert (
        scheduler["spec"]["replicas"] == 1 and scheduler["spec"]["strategy"]["type"] == "Recreate"
    )


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl not installed")
def test_kubectl_builds_the_kustomization():
    done = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "k8s")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    built = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert all(
        d["metadata"].get("namespace") == "tuneback" for d in built if d["kind"] != "Namespace"
    )


@pytest.mark.parametrize(
    "config, factory",
    [
        ("api.py", "tuneback.apps:api_app()"),
        ("api.py", "tuneback.server:api_app()"),  # the deprecated name still loads
        # Loads torch and the model: about 5 s of CPU.
        pytest.param("serve.py", "tuneback.apps:serving_app()", marks=pytest.mark.slow),
    ],
)
def test_the_gunicorn_configs_load_their_apps(tmp_path, tiny_model, config, factory):
    """``--check-config`` reads the config and builds the app (model included), then exits."""
    env = tuneback_env(
        tmp_path / "data", f"sqlite:///{tmp_path / 'data' / 'tuneback.db'}", base_model=tiny_model
    )
    if config == "api.py":
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    gunicorn = Path(sys.executable).parent / "gunicorn"
    done = subprocess.run(
        [str(gunicorn), "--check-config", "-c", str(DEPLOY / "gunicorn" / config), factory],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
