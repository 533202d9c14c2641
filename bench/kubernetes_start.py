"""Kubernetes cold start, on the project's stand-in: how fast a `--provider kubernetes` job
gets its pod and its output.

Starts the Kubernetes stand-in (``hodei_common.testing.kube``: an API server and a kubelet
that runs each pod as a Docker container, so it needs a Docker engine and the worker image,
built here when its sources changed), the embedded platform with the kubernetes provider
pointed at it, and runs `echo hello` jobs one after another (ephemeral workers: a fresh pod
each): submit -> pod Running (as a watch on the API server sees it), submit -> first log
line, submit -> end of log.

    .venv/bin/python bench/kubernetes_start.py [--jobs 20]

The stand-in is not a cluster: no scheduler queue, no image pull, no CNI, one node on this
machine. The figures say what the provider and the platform add, not what a real cluster
takes. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import asyncpg
from docker_start import Run, row, run_one
from embedded import embedded_platform
from execution import wait_for_no_workers
from kubernetes import config, watch
from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import ProtocolError

from hodei_cli.image import build_worker_image, default_tag
from hodei_common import eventloop, messaging
from hodei_common.client import ApiClient
from hodei_common.testing.kube import KubeStandIn

NAMESPACE = "bench"


class RunningPods:
    """When each job's pod was first seen Running, read from a watch in a thread."""

    def __init__(self, core: CoreV1Api) -> None:
        self.running: dict[str, float] = {}
        self._watch = watch.Watch()
        self._core = core
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._watch.stream(self._core.list_namespaced_pod, NAMESPACE,
                                            label_selector="hodei.managed=true"):
                pod = event["object"]
                job = (pod.metadata.labels or {}).get("hodei.job_id")
                if job and pod.status.phase == "Running":
                    self.running.setdefault(job, time.time())
        except (ProtocolError, ApiException):
            return  # the stand-in stopped under the watch: the run is over

    def close(self) -> None:
        self._watch.stop()


async def main(jobs: int) -> None:
    tag = default_tag()
    build_worker_image(tag)
    standin = KubeStandIn()
    standin.start()
    standin.create_namespace(NAMESPACE)
    core = CoreV1Api(config.new_client_from_config(config_file=str(standin.kubeconfig),
                                                   context=standin.context))
    pods = RunningPods(core)
    settings_doc: dict[str, Any] = {"namespace": NAMESPACE, "context": standin.context,
                                    "kubeconfig": str(standin.kubeconfig)}
    try:
        async with embedded_platform({}) as settings:
            nc = await messaging.connect(settings, name="bench-kube", initial_attempts=3)
            db = await asyncpg.connect(settings.resolved_database_url())
            api, js = ApiClient(nc, timeout_s=30), nc.jetstream()
            try:
                await db.execute(
                    "UPDATE provider_configs SET enabled = true, image = $1, settings = $2 "
                    "WHERE name = 'kubernetes'", tag, json.dumps(settings_doc))
                await run_one(api, js, "kubernetes")  # warms the client and the engine
                await wait_for_no_workers(db)
                cold: list[Run] = []
                for _ in range(jobs):
                    cold.append(await run_one(api, js, "kubernetes"))
                await wait_for_no_workers(db)
            finally:
                await db.close()
                await nc.close()
    finally:
        pods.close()
        core.api_client.close()
        standin.stop()
    running = [pods.running[str(r.job_id)] - r.submitted for r in cold
               if str(r.job_id) in pods.running]
    print(f"Kubernetes workers on the stand-in (not a cluster), `echo hello`, {jobs} jobs "
          "(p99 of 20 is their maximum)\n")
    print("| path | p50 ms | p99 ms |\n|---|---:|---:|")
    if running:
        print(row("cold: submit → pod Running", running))
    print(row("cold: submit → first log line", [r.first_line_s for r in cold]))
    print(row("cold: submit → end of log", [r.end_s for r in cold]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    eventloop.run(main(parser.parse_args().jobs))
