"""The handle on a running stand-in (a subprocess), its fault switches and the pytest fixture."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from hodei_common.testing.kube.containers import remove_all

CONTEXT = "hodei-standin"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class StandInError(Exception):
    """The stand-in did not start, or refused a control request."""


class KubeStandIn:
    """A Kubernetes API server and one-node kubelet on Docker, run as a subprocess."""

    def __init__(self, *, cpu: str = "4", memory: str = "8Gi", pods: str = "110",
                 workdir: Path | None = None) -> None:
        self.capacity = {"cpu": cpu, "memory": memory, "pods": pods}
        self.instance = uuid.uuid4().hex[:10]
        self.context = CONTEXT
        self._own_dir = workdir is None
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="hodei-kube-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def log_path(self) -> Path:
        return self.dir / "standin.log"

    def start(self) -> None:
        """Start the server and wait until it has written its kubeconfig."""
        if self._proc is not None:
            return
        ready = self.dir / "ready"
        ready.unlink(missing_ok=True)
        args = [sys.executable, "-m", "hodei_common.testing.kube", "--dir", str(self.dir),
                "--instance", self.instance, "--cpu", self.capacity["cpu"],
                "--memory", self.capacity["memory"], "--pods", self.capacity["pods"]]
        setpriv = shutil.which("setpriv")
        if setpriv is not None:  # a test session killed outright leaves no stand-in behind
            args = [setpriv, "--pdeathsig", "TERM", "--", *args]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise StandInError(f"the Kubernetes stand-in did not start:\n{tail}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{json.loads(ready.read_text())['port']}"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; then remove any container it left. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None:
            engine = docker.from_env()
            try:
                remove_all(engine.api, self.instance)
            finally:
                engine.close()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> KubeStandIn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            raise StandInError(f"{method} {path}: {e.code} {e.read().decode()}") from e

    def fail_next_creates(self, count: int = 1, status: int = 500) -> None:
        """The next ``count`` pod creates answer HTTP ``status`` with a Status body."""
        self._request("POST", "/_standin/fail-creates", {"count": count, "status": status})

    def drop_watches(self) -> int:
        """Cut every open watch connection; how many there were."""
        return int(self._request("POST", "/_standin/drop-watches")["dropped"])

    def expire_watches(self) -> int:
        """Send 410 Expired to every open watch and compact every resourceVersion so far."""
        return int(self._request("POST", "/_standin/expire-watches")["expired"])

    def open_watches(self) -> int:
        """How many watches are open now."""
        return int(self._request("GET", "/_standin/watches")["open"])

    def evict(self, namespace: str, name: str) -> dict[str, Any]:
        """Evict a pod as the kubelet does: killed, kept, Failed with reason Evicted."""
        return dict(self._request("POST", "/_standin/evict",
                                  {"namespace": namespace, "name": name}))

    def received(self, kind: str) -> list[dict[str, Any]]:
        """Every body POSTed to create ``kind`` ("pods" or "secrets"), exactly as sent."""
        plural = kind.lower() if kind.lower().endswith("s") else kind.lower() + "s"
        return list(self._request("GET", f"/_standin/received/{plural}"))

    def kubeconfig_for(self, user: str, path: Path) -> Path:
        """A kubeconfig of this stand-in whose token is ``user``: the stand-in checks no
        token, so the token names the caller in :meth:`requests`."""
        loaded = json.loads(self.kubeconfig.read_text())
        for entry in loaded["users"]:
            entry["user"] = {"token": user}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(loaded, indent=2))
        return path

    def requests(self, user: str | None = None) -> list[dict[str, str]]:
        """Every distinct API request received (of ``user`` alone, when given), as RBAC reads
        it: ``user``, ``verb``, ``resource`` (``pods/log`` for a subresource) and
        ``namespace``; a request outside the API groups has ``path`` and no resource."""
        query = "" if user is None else "?" + urllib.parse.urlencode({"user": user})
        return list(self._request("GET", f"/_standin/requests{query}"))

    def create_namespace(self, name: str) -> None:
        """Create a namespace (tests make one each to stay apart)."""
        self._request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                     "metadata": {"name": name}})


@pytest.fixture(scope="session")
def kube_standin(docker_engine: docker.DockerClient) -> Iterator[KubeStandIn]:
    """A Kubernetes stand-in for the session, on the Docker engine of ``docker_engine``."""
    standin = KubeStandIn()
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()
