"""The platform's Prometheus metrics: one :class:`Metrics` per process, shared by its services.

Counters and histograms move where a service already handles the event (a submit, a
finished report, a registration, a lost worker), from values the statement it runs anyway
returns: counting adds no round trip to any job's path. Gauges of the platform's state
(queued jobs, workers, the outbox, consumers' backlogs) are read at scrape time, one query
or one consumer info each, by the service that owns them (:meth:`HodeiService.
refresh_metrics`). Each process counts what it saw; Prometheus sums the instances. Labels
name providers, states, endpoints and reasons, never a job or worker id, so their number
stays bounded.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

# From a warm worker's few milliseconds to a cold container's minutes.
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0, 900.0)
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
               4 * 3600.0)
PROVISION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Every Hodei metric, in a registry of its own (never the library's global one, so a
    process with several services registers each metric once)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.jobs_submitted = Counter(
            "hodei_jobs_submitted", "Jobs stored QUEUED by the API", ["provider"], registry=r)
        self.jobs_finished = Counter(
            "hodei_jobs_finished", "Jobs that reached a terminal state", ["provider", "state"],
            registry=r)
        self.job_queue_wait = Histogram(
            "hodei_job_queue_wait_seconds", "From a job's submit to its start",
            buckets=WAIT_BUCKETS, registry=r)
        self.job_run = Histogram(
            "hodei_job_run_seconds", "From a job's start to its end", buckets=RUN_BUCKETS,
            registry=r)
        self.worker_provision = Histogram(
            "hodei_worker_provision_seconds", "From a worker's request to its registration",
            ["provider"], buckets=PROVISION_BUCKETS, registry=r)
        self.workers_lost = Counter(
            "hodei_workers_lost", "Workers declared lost", ["reason"], registry=r)
        self.api_requests = Counter(
            "hodei_api_requests", "API requests answered", ["endpoint", "code"], registry=r)
        self.api_request_seconds = Histogram(
            "hodei_api_request_seconds", "Time to answer an API request", ["endpoint"],
            buckets=REQUEST_BUCKETS, registry=r)
        self.log_lines = Counter(
            "hodei_log_lines", "Log lines of finished job attempts, as their agents counted",
            registry=r)
        self.jobs_queued = Gauge("hodei_jobs_queued", "Jobs QUEUED now", registry=r)
        self.workers = Gauge("hodei_workers", "Workers now, by provider and state",
                             ["provider", "state"], registry=r)
        self.outbox_unpublished = Gauge(
            "hodei_outbox_unpublished", "Outbox rows not yet published", registry=r)
        self.outbox_lag = Gauge(
            "hodei_outbox_lag_seconds", "Age of the oldest unpublished outbox row (0: none)",
            registry=r)
        self.consumer_pending = Gauge(
            "hodei_consumer_pending", "Messages a durable consumer has not been given yet",
            ["consumer"], registry=r)

    def job_finished(self, provider: str, state: str, *, created_at: datetime | None,
                     started_at: datetime | None, completed_at: datetime | None) -> None:
        """A job reached ``state``; its wait and run times when it ran."""
        self.jobs_finished.labels(provider, state).inc()
        if started_at is None:
            return
        if created_at is not None:
            self.job_queue_wait.observe(max((started_at - created_at).total_seconds(), 0.0))
        if completed_at is not None:
            self.job_run.observe(max((completed_at - started_at).total_seconds(), 0.0))

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
