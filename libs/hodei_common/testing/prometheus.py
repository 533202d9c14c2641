"""A real Prometheus for the tests (Debian's ``prometheus``, which scripts/install adds).

:class:`Prometheus` runs the server on a free port with its own storage directory, scraping
the given targets every second, and answers instant queries through its HTTP API. A
machine without the binary fails the test that needs it, as a missing PostgreSQL does:
a metrics test that skips would pass without ever having been scraped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType

import pytest

from hodei_common.embedded.process import free_port, port_open, stop_process, tail

BINARY = "prometheus"
START_TIMEOUT_S = 60.0
SCRAPE_INTERVAL = "1s"


def binary() -> str:
    """The prometheus binary; fails the test when there is none."""
    found = shutil.which(BINARY) or (str(p) if (p := Path("/usr/bin/prometheus")).exists()
                                     else None)
    if found is None:
        pytest.fail("prometheus is not installed: run scripts/install (Debian package "
                    "`prometheus`)", pytrace=False)
    return found


def config(targets: list[str]) -> str:
    """A configuration scraping ``targets`` (``host:port``) every second at /metrics."""
    return json.dumps({  # JSON is YAML
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                   "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [{"job_name": "hodei", "metrics_path": "/metrics",
                            "static_configs": [{"targets": targets}]}],
    }, indent=2)


class Prometheus:
    """One Prometheus server of a test, started and stopped by its pid."""

    def __init__(self, root: Path, targets: list[str]) -> None:
        self.root = root
        self.targets = targets
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = binary()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "prometheus.yml").write_text(config(self.targets))
        self.port = free_port()
        log_file = self.root / "prometheus.log"
        with log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                [exe, f"--config.file={self.root / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        # It listens before its storage is open, answering 503 to everything until then.
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"prometheus did not start:\n{tail(log_file)}", pytrace=False)
            time.sleep(0.1)

    def _ready(self) -> bool:
        if not port_open("127.0.0.1", self.port):
            return False
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as answer:
                return bool(answer.status == 200)
        except OSError:  # urllib's HTTPError (a 503) among them
            return False

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)

    def __enter__(self) -> Prometheus:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def query(self, expr: str) -> list[dict[str, object]]:
        """The result vector of the instant query ``expr``."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        result: list[dict[str, object]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of ``expr``; None when it has no sample (not scraped yet)."""
        result = self.query(expr)
        if not result:
            return None
        sample = result[0]["value"]
        assert isinstance(sample, list)
        return float(sample[1])

    def targets_up(self) -> bool:
        """Whether every target was scraped, the last time, successfully."""
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=5) as answer:
            active = json.loads(answer.read())["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)
