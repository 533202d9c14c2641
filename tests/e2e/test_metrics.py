"""The embedded platform scraped by a real Prometheus: after N jobs its query API gives the
counts those jobs make, and the probes beside the metrics answer."""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from hodei_common.testing import assert_eventually
from hodei_common.testing.http import get
from hodei_common.testing.prometheus import Prometheus
from tests.cli.conftest import run_cli
from tests.e2e.conftest import Platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JOBS = 3
UUID_SHAPE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")
LINES_PER_JOB = 2



@pytest.fixture
def prometheus(platform: Platform, tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus scraping the platform's metrics address (from dev.json) every second."""
    target = urllib.parse.urlsplit(platform.endpoints["metrics_url"]).netloc
    with Prometheus(tmp_path / "prometheus", [target]) as server:
        yield server


async def test_prometheus_counts_the_jobs_run(platform: Platform, prometheus: Prometheus
                                             ) -> None:
    await assert_eventually(prometheus.targets_up, within_s=30,
                            message="Prometheus never scraped the platform")
    results = await asyncio.gather(*(
        run_cli(platform.env, "job", "run", "--command", "printf 'one\\ntwo\\n'",
                timeout_s=60) for _ in range(JOBS)))
    assert [(r.code, r.stdout) for r in results] == [(0, "one\ntwo\n")] * JOBS

    expected = {
        'hodei_jobs_submitted_total{provider="local"}': JOBS,
        'hodei_jobs_finished_total{provider="local",state="SUCCEEDED"}': JOBS,
        "hodei_log_lines_total": JOBS * LINES_PER_JOB,
        "hodei_job_queue_wait_seconds_count": JOBS,
        "hodei_job_run_seconds_count": JOBS,
        'hodei_api_requests_total{endpoint="jobs_submit",code="ok"}': JOBS,
        'hodei_api_request_seconds_count{endpoint="jobs_submit"}': JOBS,
        'hodei_worker_provision_seconds_count{provider="local"}': JOBS,
        "hodei_jobs_queued": 0,
        "hodei_outbox_unpublished": 0,
        'hodei_workers{provider="local",state="BUSY"}': 0,
        'hodei_consumer_pending{consumer="WORKER_STATUS/scheduler-status"}': 0,
    }

    def all_counted() -> bool:
        scraped = {expr: prometheus.value(expr) for expr in expected}
        assert scraped == expected
        return True

    await assert_eventually(all_counted, within_s=30)
    assert prometheus.value('hodei_jobs_finished_total{state!="SUCCEEDED"}') is None
    assert prometheus.value("hodei_workers_lost_total") is None
    # Labels name providers, states, endpoints and consumers: never a job or a worker.
    labels = {str(v) for r in prometheus.query('{__name__=~"hodei_.*"}')
              for v in dict(r["metric"]).values()}  # type: ignore[call-overload]
    assert not {v for v in labels if UUID_SHAPE.search(v)}


async def test_probes_answer_beside_the_metrics(platform: Platform) -> None:
    base = platform.endpoints["metrics_url"].removesuffix("/metrics")
    assert get(f"{base}/healthz") == (200, "ok\n")
    assert get(f"{base}/readyz") == (200, "ready\n")
    assert get(f"{base}/nothing")[0] == 404
