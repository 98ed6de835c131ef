"""A compose file (docker-compose.yml by default) played as local processes: commands, environment, configs.

Docker cannot run here, so the rehearsal reads the compose file and starts
what each service would run, with three translations only: the volumes'
container paths become temporary folders (in commands, environment and the
copied config files), the model in the copied configs becomes the simulated
one (no weights), and the services reach Redis and Flower on free loopback
ports instead of `redis:6379` and `5555`. Everything else (the commands'
arguments, the Redis command, the password variables, the broker URLs,
roots, queue names) comes from the files as written, so a change that
breaks their agreement breaks the rehearsal.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import yaml

from editbatch.cluster.redis_server import free_port

from .conftest import REPO

SIMULATED = {"type": "simulated", "path": "sim", "params": {"seconds": 0.05}}
CONTAINER_ROOT = "/workspace"


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?message}` and `$$`."""
    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if op == ":?" and not env.get(name):
            raise AssertionError(f"compose would refuse to start: {name} unset ({arg})")
        if op == ":-" and not env.get(name):
            return arg
        return env.get(name, "")

    value = re.sub(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:\?|:-)([^}]*))?\}", one, value)
    return value.replace("$$", "$")


def replace_paths(text: str, mapping: dict[str, Path]) -> str:
    """Each container path (a whole path component, not `/data` inside `/dataset.jsonl`) by its local folder."""
    for target, local in sorted(mapping.items(), key=lambda kv: -len(kv[0])):
        text = re.sub(r"(?<![\w.-])" + re.escape(target) + r"(?![\w.-])", str(local), text)
    return text


class Rehearsal:
    """The compose project under `root`: one process per service, started in dependency order."""

    def __init__(self, root: Path, dotenv: dict[str, str], compose_file: str = "docker-compose.yml"):
        self.root = root
        self.compose = yaml.safe_load((REPO / compose_file).read_text())
        self.services = self.compose["services"]
        self.dotenv = dotenv
        self.redis_port, self.flower_port = free_port(), free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        (root / "logs").mkdir(parents=True)
        for service in self.services.values():
            self.volumes(service)

    # ---------------------------------------------------------------- translations

    def volumes(self, service: dict) -> dict[str, Path]:
        """The service's container paths -> temporary folders (the same folder wherever a path is mounted)."""
        mapping = {}
        for volume in service.get("volumes") or []:
            source, target = interpolate(volume, self.dotenv).split(":")[:2]
            folder = self.root / "volumes" / target.strip("/").replace("/", "_")
            if not folder.exists():
                folder.mkdir(parents=True)
                if source == "./configs":
                    self._copy_configs(folder)
            mapping[target] = folder
        return mapping

    def _all_volumes(self) -> dict[str, Path]:
        mapping = {}
        for service in self.services.values():
            for volume in service.get("volumes") or []:
                target = interpolate(volume, self.dotenv).split(":")[1]
                mapping[target] = self.root / "volumes" / target.strip("/").replace("/", "_")
        return mapping

    def _copy_configs(self, folder: Path) -> None:
        """The repository's configs with the container paths of every volume made local; the simulated model."""
        mapping = self._all_volumes()
        for path in (REPO / "configs").glob("*.yaml"):
            text = replace_paths(path.read_text(), mapping)
            data = yaml.safe_load(text)
            if isinstance(data, dict) and "model" in data:
                data["model"] = SIMULATED
            (folder / path.name).write_text(yaml.safe_dump(data))

    def path(self, container_path: str) -> Path:
        """A container path as this machine sees it."""
        for target, local in sorted(self._all_volumes().items(), key=lambda kv: -len(kv[0])):
            if container_path == target or container_path.startswith(target + "/"):
                return local / container_path[len(target):].lstrip("/")
        raise AssertionError(f"{container_path} is on no volume of the compose file")

    def local(self, text: str, service: dict) -> str:
        text = replace_paths(interpolate(text, self.dotenv), self.volumes(service))
        # The service names of the compose network, on this machine.
        return text.replace("@redis:6379/", f"@127.0.0.1:{self.redis_port}/")

    def environment(self, name: str) -> dict[str, str]:
        service = self.services[name]
        env = {"PATH": f"{REPO / '.venv' / 'bin'}:/usr/bin:/bin", "HOME": str(self.root),
               "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"}
        for key, value in (service.get("environment") or {}).items():
            env[key] = self.local(str(value), service)
        return env

    def command(self, name: str) -> list[str]:
        service = self.services[name]
        command = service["command"]
        assert isinstance(command, list), f"{name}: command as a list, so that no shell splits it"
        return [self.local(str(part), service) for part in command]

    # ---------------------------------------------------------------- services

    def start(self, name: str, command: list[str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
        log = (self.root / "logs" / f"{name}.log").open("ab")
        proc = subprocess.Popen(command or self.command(name), env=self.environment(name), cwd=cwd or self.root,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def start_redis(self) -> None:
        command = self.command("redis")
        script = command[-1]
        assert "exec redis-server -" in script  # the config arrives on stdin, the password with it
        # Loopback and a free port instead of the compose network's redis:6379.
        command[-1] = script.replace("exec redis-server -",
                                     f"exec redis-server - --port {self.redis_port} --bind 127.0.0.1")
        data = self.root / "redis-data"
        data.mkdir()
        self.start("redis", command, cwd=data)

    def start_flower(self) -> None:
        ports = self.services["flower"]["ports"]
        assert ports == ["127.0.0.1:5555:5555"], "Flower must be published on the host's loopback only"
        command = self.command("flower")
        assert "--port=5555" in command
        command[command.index("--port=5555")] = f"--port={self.flower_port}"
        self.start("flower", [*command, "--address=127.0.0.1"])

    def run(self, name: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """A one-shot service (`docker compose run --rm NAME`)."""
        return subprocess.run(self.command(name), env=self.environment(name), cwd=self.root, capture_output=True,
                              text=True, timeout=timeout)

    def exec(self, name: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """`docker compose exec NAME ARGS...`: a command in that service's environment and volumes."""
        service = self.services[name]
        return subprocess.run([self.local(a, service) for a in args], env=self.environment(name), cwd=self.root,
                              capture_output=True, text=True, timeout=timeout)

    def log(self, name: str) -> str:
        path = self.root / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """Like `docker compose down`: SIGTERM to every service, Redis last (the others reconnect to it)."""
        clients = [p for n, p in self.procs.items() if n != "redis"]
        self._stop(clients)
        self._stop([p for n, p in self.procs.items() if n == "redis"])

    @staticmethod
    def _stop(procs: list[subprocess.Popen]) -> None:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
