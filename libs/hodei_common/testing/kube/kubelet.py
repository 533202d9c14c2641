"""The kubelet: each scheduled pod's first container runs as a real Docker container.

Images must already be on the engine (nothing is ever pulled). The container always shares
the host's network, whatever ``hostNetwork`` says, so the pod's IP is the host's. Blocking
engine calls run in a pool of threads; a thread per running pod waits for its container.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import docker
from docker.errors import APIError, DockerException

from hodei_common.testing.kube import containers
from hodei_common.testing.kube.containers import ContainerError
from hodei_common.testing.kube.logs import ContainerLogs
from hodei_common.testing.kube.pods import (
    HOST_IP,
    TERMINAL,
    container_status,
    set_condition,
    set_readiness,
    waiting,
)
from hodei_common.testing.kube.store import now

log = logging.getLogger(__name__)
Obj = dict[str, Any]
T = TypeVar("T")
RETRY_S = 0.5  # how soon a missing image or secret is looked for again
RESTART_BACKOFF_S = (0.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0)


class Cluster(Protocol):
    """What the kubelet reads and writes of the cluster."""

    def update_pod(self, run: PodRun, change: Callable[[Obj], None]) -> Obj | None: ...
    def record(self, pod: Obj, type_: str, reason: str, message: str, component: str) -> None: ...
    def secret(self, namespace: str, name: str) -> Obj | None: ...
    def finish_delete(self, run: PodRun) -> None: ...


@dataclass(eq=False)
class PodRun:
    """The kubelet's hold on one pod."""

    namespace: str
    name: str
    uid: str
    task: asyncio.Task[None] | None = None
    container_id: str | None = None
    creating: bool = False
    running: bool = False
    grace_s: int = 30
    deleting: bool = False
    ending: tuple[str, str] | None = None  # reason and message of a kill the kubelet decided
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    last_failure: tuple[str, str] | None = None


def _docker_time(value: str) -> str:
    """Docker's nanosecond timestamp as Kubernetes writes it."""
    return value.split(".", 1)[0].removesuffix("Z") + "Z"


class Kubelet:
    """Runs pods bound to the node; reports their fate through ``cluster``."""

    def __init__(self, cluster: Cluster, engine: docker.DockerClient, instance: str) -> None:
        self._cluster = cluster
        self._api = engine.api
        self._instance = instance
        self._pool = ThreadPoolExecutor(max_workers=128, thread_name_prefix="kubelet")
        self.runs: dict[str, PodRun] = {}
        self.logs = ContainerLogs(self._api, self._pool)
        self._background: set[asyncio.Future[Any]] = set()

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: fn(*args, **kwargs))

    def admit(self, pod: Obj) -> None:
        """Start running a pod just bound to the node."""
        meta = pod["metadata"]
        run = PodRun(meta["namespace"], meta["name"], meta["uid"],
                     grace_s=pod["spec"].get("terminationGracePeriodSeconds", 30))
        self.runs[run.uid] = run
        run.task = asyncio.create_task(self._run(run, pod), name=f"pod {meta['name']}")
        deadline = pod["spec"].get("activeDeadlineSeconds")
        if deadline is not None:
            run.timers.append(asyncio.get_running_loop().call_later(
                deadline, self.end, run, "DeadlineExceeded",
                "Pod was active on the node longer than the specified deadline", None))

    async def _run(self, run: PodRun, pod: Obj) -> None:
        try:
            self._accept(run)
            args = await self._prepare(run)
            if args is None:
                return
            await self._start(run, args)
            while await self._wait(run):
                pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s/%s: the kubelet failed", run.namespace, run.name)
            raise

    def _accept(self, run: PodRun) -> None:
        def accept(pod: Obj) -> None:
            status = pod["status"]
            status.update(startTime=now(), hostIP=HOST_IP, hostIPs=[{"ip": HOST_IP}],
                          podIP=HOST_IP, podIPs=[{"ip": HOST_IP}])
            set_condition(pod, "PodReadyToStartContainers", True)
            set_condition(pod, "Initialized", True)
            set_readiness(pod, False, "ContainersNotReady")
            status["containerStatuses"] = [container_status(pod, waiting("ContainerCreating"))]
        self._cluster.update_pod(run, accept)

    async def _prepare(self, run: PodRun) -> Obj | None:
        """The container's create arguments, once its image and secrets are there."""
        pulls = 0
        while True:
            pod = self._cluster.update_pod(run, lambda pod: None)
            if pod is None:
                return None
            container = pod["spec"]["containers"][0]
            try:
                containers.check_reference(container["image"])
                image = await self._call(containers.inspect_image, self._api, container["image"])
                env = containers.environment(
                    pod, container, lambda name: self._cluster.secret(run.namespace, name))
                args = containers.create_args(pod, image, env, self._instance)
            except ContainerError as e:
                pulls = pulls + 1 if e.reason == "ErrImagePull" else 0
                await self._waiting(run, pod, e, pulls)
                if not e.retry:
                    return None
                continue
            self._cluster.record(pod, "Normal", "Pulled", f'Container image '
                                 f'"{container["image"]}" already present on machine', "kubelet")
            args["image_id"] = str(image.get("Id", ""))
            return args

    async def _waiting(self, run: PodRun, pod: Obj, error: ContainerError, pulls: int) -> None:
        image = pod["spec"]["containers"][0]["image"]
        reason, message = error.reason, error.message
        # The same failure again is one event, not one per retry (the real one counts them).
        if (reason, message) != run.last_failure:
            run.last_failure = (reason, message)
            if reason == "ErrImagePull":
                self._cluster.record(pod, "Warning", "Failed",
                                     f'Failed to pull image "{image}": {message}', "kubelet")
            self._cluster.record(pod, "Warning", "Failed", f"Error: {reason}", "kubelet")
        self._cluster.update_pod(run, lambda p: p["status"].update(
            containerStatuses=[container_status(p, waiting(reason, message))]))
        if reason != "ErrImagePull":
            await asyncio.sleep(RETRY_S)
            return
        await asyncio.sleep(RETRY_S)
        back_off = f'Back-off pulling image "{image}"'
        if pulls == 1:
            self._cluster.record(pod, "Normal", "BackOff", back_off, "kubelet")
        self._cluster.update_pod(run, lambda p: p["status"].update(containerStatuses=[
            container_status(p, waiting("ImagePullBackOff", f"{back_off}: ErrImagePull: "
                                        f"{message}"))]))
        await asyncio.sleep(min(RETRY_S * 2 ** pulls, 10.0))

    async def _start(self, run: PodRun, args: Obj) -> None:
        image_id = args.pop("image_id")
        host = args.pop("host_config")
        run.creating = True
        try:
            created = await self._call(lambda: self._api.create_container(
                host_config=self._api.create_host_config(**host), **args))
            run.container_id = str(created["Id"])
            await self._call(self._api.start, run.container_id)
            run.running = True
        finally:
            run.creating = False
        info = await self._call(self._api.inspect_container, run.container_id)
        started = _docker_time(info["State"]["StartedAt"])
        pod = self._cluster.update_pod(run, lambda p: self._running(p, run, image_id, started))
        if pod is not None:
            self._cluster.record(pod, "Normal", "Created",
                                 f"Created container {args['name']}", "kubelet")
            self._cluster.record(pod, "Normal", "Started",
                                 f"Started container {args['name']}", "kubelet")
        if run.deleting or run.ending:
            await self._call(self._api.stop, run.container_id, timeout=run.grace_s)

    def _running(self, pod: Obj, run: PodRun, image_id: str, started: str,
                 restarts: int = 0) -> None:
        status = pod["status"]
        last = (status.get("containerStatuses") or [{}])[0].get("lastState", {})
        cs = container_status(pod, {"running": {"startedAt": started}}, image_id=image_id,
                              container_id=run.container_id, ready=True, started=True)
        cs.update(restartCount=restarts, lastState=last if "terminated" in last else {})
        status.update(phase="Running", containerStatuses=[cs])
        set_readiness(pod, True)

    async def _wait(self, run: PodRun) -> bool:
        """Wait for the container to exit and report it; True when it was restarted."""
        assert run.container_id is not None
        await self._call(self._api.wait, run.container_id, timeout=None)
        run.running = False
        state = (await self._call(self._api.inspect_container, run.container_id))["State"]
        code = int(state["ExitCode"])
        reason = "OOMKilled" if state.get("OOMKilled") else "Completed" if code == 0 else "Error"
        terminated = {"terminated": {
            "exitCode": code, "reason": reason, "startedAt": _docker_time(state["StartedAt"]),
            "finishedAt": _docker_time(state["FinishedAt"]),
            "containerID": f"docker://{run.container_id}"}}
        pod = self._cluster.update_pod(run, lambda p: None)
        if pod is None:
            return False
        policy = pod["spec"].get("restartPolicy", "Always")
        if run.deleting or run.ending or policy == "Never" \
                or (policy == "OnFailure" and code == 0):
            self._terminated(run, terminated, code)
            return False
        return await self._restart(run, terminated)

    def _terminated(self, run: PodRun, terminated: Obj, code: int) -> None:
        def report(pod: Obj) -> None:
            cs = pod["status"]["containerStatuses"][0]
            cs.update(state=terminated, ready=False, started=False)
            set_readiness(pod, False, "PodCompleted")
            if run.ending is not None:
                pod["status"].update(phase="Failed", reason=run.ending[0],
                                     message=run.ending[1])
            elif not run.deleting:
                pod["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
        self._cluster.update_pod(run, report)
        if run.deleting:
            self._cluster.finish_delete(run)

    async def _restart(self, run: PodRun, terminated: Obj) -> bool:
        """Start the container again after the kubelet's back-off, as restartPolicy asks."""
        pod = self._cluster.update_pod(run, lambda p: None)
        assert pod is not None
        assert run.container_id is not None
        cs = pod["status"]["containerStatuses"][0]
        restarts = cs["restartCount"]
        delay = RESTART_BACKOFF_S[min(restarts, len(RESTART_BACKOFF_S) - 1)]
        name = pod["spec"]["containers"][0]["name"]

        def back_off(p: Obj) -> None:
            message = f"back-off {delay:g}s restarting failed container={name} pod=" \
                      f"{run.name}_{run.namespace}({run.uid})"
            p["status"]["containerStatuses"][0].update(
                state=waiting("CrashLoopBackOff", message), lastState=terminated,
                ready=False, started=False)
            set_readiness(p, False, "ContainersNotReady")
        self._cluster.update_pod(run, back_off)
        await asyncio.sleep(delay)
        if run.deleting or run.ending or self._cluster.update_pod(run, lambda p: None) is None:
            self._terminated(run, terminated, terminated["terminated"]["exitCode"])
            return False
        await self._call(self._api.start, run.container_id)
        run.running = True
        info = await self._call(self._api.inspect_container, run.container_id)
        self._cluster.update_pod(run, lambda p: self._running(
            p, run, cs["imageID"], _docker_time(info["State"]["StartedAt"]), restarts + 1))
        return True

    def end(self, run: PodRun, reason: str, message: str, disruption: str | None,
            grace_s: int | None = None) -> None:
        """Kill the pod for the kubelet's own ``reason`` (an eviction, a deadline): it stays,
        Failed; ``disruption`` adds a DisruptionTarget condition with that reason."""
        pod = self._cluster.update_pod(run, lambda p: None)
        if run.ending or run.deleting or pod is None or pod["status"]["phase"] in TERMINAL:
            return
        run.ending = (reason, message)
        self._cluster.record(pod, "Warning", reason, message, "kubelet")
        if disruption is not None:
            self._cluster.update_pod(run, lambda p: set_condition(
                p, "DisruptionTarget", True, disruption, f"{reason}: {message}"))
        if run.running:
            self._spawn(self._stop(run, run.grace_s if grace_s is None else grace_s))
        elif not run.creating:
            self._cancel(run)

            def failed(p: Obj) -> None:
                p["status"].update(phase="Failed", reason=reason, message=message)
                set_readiness(p, False, "PodCompleted")
            self._cluster.update_pod(run, failed)

    def stop_pod(self, uid: str, grace_s: int) -> bool:
        """Stop a pod being deleted; True when its container gets ``grace_s`` to stop and the
        kubelet then calls ``finish_delete``, False when it can go at once."""
        run = self.runs.get(uid)
        if run is None:
            return False
        run.grace_s = grace_s
        if run.running or run.creating:
            run.deleting = True
            if run.running:
                self._spawn(self._stop(run, grace_s))
            return True
        self.forget(run)
        return False

    async def _stop(self, run: PodRun, grace_s: int) -> None:
        if run.container_id is None:
            return
        pod = self._cluster.update_pod(run, lambda p: None)
        if pod is not None:
            self._cluster.record(pod, "Normal", "Killing", f"Stopping container "
                                 f"{pod['spec']['containers'][0]['name']}", "kubelet")
        with contextlib.suppress(DockerException):
            if grace_s <= 0:
                await self._call(self._api.kill, run.container_id)
            else:
                await self._call(self._api.stop, run.container_id, timeout=grace_s)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _cancel(self, run: PodRun) -> None:
        for timer in run.timers:
            timer.cancel()
        if run.task is not None and run.task is not asyncio.current_task():
            run.task.cancel()

    def forget(self, run: PodRun) -> None:
        """Let go of a pod that is gone: stop its work and remove its container."""
        self._cancel(run)
        self.runs.pop(run.uid, None)
        if run.container_id is not None:
            self._spawn(self._call(self._remove, run.container_id))

    def _remove(self, container_id: str) -> None:
        # Gone already, or its removal already under way: either way it goes.
        with contextlib.suppress(APIError):
            self._api.remove_container(container_id, force=True)

    def container_of(self, uid: str) -> str | None:
        """The id of the pod's container, once it has one."""
        run = self.runs.get(uid)
        return None if run is None else run.container_id

    async def shutdown(self) -> None:
        """Stop every pod and remove every container this stand-in made."""
        for run in list(self.runs.values()):
            self._cancel(run)
        await self._call(containers.remove_all, self._api, self._instance)
        for task in list(self._background):
            task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

