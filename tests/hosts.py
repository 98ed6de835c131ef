"""Hosts as Linux network namespaces: a Redis host, worker hosts, a producer host, joined only to each other.

Every host is a namespace ``ebh<pid>-<name>`` with one veth (``eth0``,
198.18.0.x/24) whose other end sits on a bridge inside a namespace of its
own (``ebh<pid>-net``), never in the machine's namespace: no default route,
no link to the machine's interfaces, no traffic anywhere but 198.18.0.0/24.
Cutting a host's link is `ip link set v-<host> down` on the bridge side.
Storage is shared (the namespaces share the mount namespace, as an NFS mount
would be shared). `stop()` ends every process started in the namespaces and
deletes them; namespaces of earlier sessions whose pid is gone are removed.
Used by tests/test_hosts.py and bench/hosts.py; needs root.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

PREFIX = "ebh"
SUBNET = "198.18.0"
REPO = Path(__file__).resolve().parents[1]


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def why_not_available() -> str | None:
    """None when namespaces can be made here, else the reason."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"{PREFIX}{os.getpid()}-probe"
    try:
        ip("netns", "add", name)
    except (OSError, subprocess.CalledProcessError) as e:
        return f"cannot create a network namespace: {getattr(e, 'stderr', '') or e}".strip()
    try:
        probe = ip("-n", name, "link", "add", "br0", "type", "bridge", check=False)
        if probe.returncode != 0:
            return f"cannot create a bridge in a namespace: {probe.stderr.strip()}"
    finally:
        ip("netns", "del", name, check=False)
    return None


def remove_leftovers() -> None:
    """Namespaces (and their processes) of earlier sessions whose process is gone."""
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        pid = name[len(PREFIX):].split("-")[0]
        if not name.startswith(PREFIX) or not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        _kill_in(name)
        ip("netns", "del", name, check=False)


def _kill_in(namespace: str) -> None:
    for pid in ip("netns", "pids", namespace, check=False).stdout.split():
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass


class Hosts:
    """Named hosts on one bridge; `address(name)`, `start(name, argv)`, `cut(name)`, `restore(name)`."""

    def __init__(self, names: list[str]):
        self.session = f"{PREFIX}{os.getpid()}"
        self.names = list(names)
        self.addresses = {name: f"{SUBNET}.{i + 1}" for i, name in enumerate(names)}
        self.net = f"{self.session}-net"
        self.procs: list[subprocess.Popen] = []
        self.made: list[str] = []

    def ns(self, name: str) -> str:
        return f"{self.session}-{name}"

    def address(self, name: str) -> str:
        return self.addresses[name]

    def build(self) -> "Hosts":
        remove_leftovers()
        for namespace in [self.net, *map(self.ns, self.names)]:
            ip("netns", "del", namespace, check=False)  # this pid's own, from a crashed fixture
            ip("netns", "add", namespace)
            self.made.append(namespace)
            ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", self.net, "link", "add", "br0", "type", "bridge")
        ip("-n", self.net, "link", "set", "br0", "up")
        for name in self.names:
            ip("-n", self.net, "link", "add", f"v-{name}", "type", "veth", "peer", "name", "eth0",
               "netns", self.ns(name))
            ip("-n", self.net, "link", "set", f"v-{name}", "master", "br0", "up")
            ip("-n", self.ns(name), "addr", "add", f"{self.address(name)}/24", "dev", "eth0")
            ip("-n", self.ns(name), "link", "set", "eth0", "up")
        return self

    def start(self, name: str, argv: list[str], *, env: dict | None = None, log: Path | None = None,
              stdin: bytes | None = None, **popen) -> subprocess.Popen:
        """A process on host `name` (its output to `log`, else pipes)."""
        out = log.open("ab") if log else subprocess.PIPE
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(name), *argv], cwd=REPO,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE, **popen)
        if log:
            out.close()
        if stdin is not None:
            proc.stdin.write(stdin)
            proc.stdin.close()
        self.procs.append(proc)
        return proc

    def editbatch(self, name: str, *args: str, **kw) -> subprocess.Popen:
        return self.start(name, [sys.executable, "-m", "editbatch", *args], **kw)

    def cut(self, name: str) -> None:
        ip("-n", self.net, "link", "set", f"v-{name}", "down")

    def restore(self, name: str) -> None:
        ip("-n", self.net, "link", "set", f"v-{name}", "up")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for namespace in reversed(self.made):
            _kill_in(namespace)
            ip("netns", "del", namespace, check=False)
        self.made.clear()


def start_redis(hosts: Hosts, name: str, workdir: Path, port: int = 6379) -> str:
    """redis-server on host `name`, bound to its address, with a password and an append-only file; its URL."""
    from editbatch.cluster.redis_server import redis_server_binary

    workdir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    conf = "\n".join([
        f"port {port}", f"bind {hosts.address(name)}", f"requirepass {password}", 'save ""', "appendonly yes",
        "appendfsync everysec", "maxmemory-policy noeviction", f"dir {workdir}", "loglevel warning",
    ]) + "\n"
    hosts.start(name, [redis_server_binary(), "-"], log=workdir / "redis.log", stdin=conf.encode())
    url = f"redis://:{password}@{hosts.address(name)}:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ping = hosts.start(name, [sys.executable, "-c", f"import redis; redis.Redis.from_url({url!r}).ping()"])
        if ping.wait() == 0:
            return url
        time.sleep(0.1)
    raise RuntimeError("redis-server did not start: " + (workdir / "redis.log").read_text()[-500:])
