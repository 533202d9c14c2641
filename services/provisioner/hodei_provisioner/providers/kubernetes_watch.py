"""One watch on a provider's labelled pods, in a thread of its own.

It lists the pods, then watches from the list's resourceVersion, resuming from the last
one it saw when a connection drops or the server ends the watch, and listing again when
the server says that version is too old (410 Gone). After every list, a pod it knew of
that is no longer there is told as deleted: a deletion missed while the watch was down
is not lost. Every pod seen is handed to ``tell(event, pod)`` as a plain dict.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

# The server ends a watch after this long (the client then resumes): no connection is
# trusted forever, and a half-open one is noticed by the read timeout past it.
WATCH_S = 60
CONNECT_TIMEOUT_S = 5.0
RETRY_MIN_S, RETRY_MAX_S = 0.2, 5.0
GONE = 410
Tell = Callable[[str, dict[str, Any]], None]


class PodWatch:
    """Watches ``namespace``'s pods matching ``selector`` until :meth:`stop`."""

    def __init__(self, core: Any, namespace: str, selector: str, tell: Tell) -> None:
        self.namespace = namespace
        self.selector = selector
        self._core = core
        self._tell = tell
        self._stopping = threading.Event()
        self._response: Any = None
        self._known: dict[str, dict[str, Any]] = {}  # name -> the pod last seen
        self._thread = threading.Thread(target=self._run, name=f"pod-watch-{namespace}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the watch; its thread leaves at once or when its read returns."""
        self._stopping.set()
        # Closing the response here would wait for the reading thread's lock: shutting its
        # socket down ends that read at once instead (the thread then closes the response).
        sock = getattr(getattr(self._response, "connection", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=2.0)

    def _run(self) -> None:
        version: str | None = None
        delay = RETRY_MIN_S
        while not self._stopping.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
                delay = RETRY_MIN_S
            except ApiException as e:
                if e.status == GONE:
                    log.info("pod watch in %s: version too old; listing again", self.namespace)
                    version = None
                    continue
                log.warning("pod watch in %s: the API server answered %s %s; retrying",
                            self.namespace, e.status, e.reason)
            except (OSError, ValueError, urllib3.exceptions.HTTPError) as e:
                if self._stopping.is_set():
                    return
                log.info("pod watch in %s dropped (%s); resuming", self.namespace,
                         type(e).__name__)
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, RETRY_MAX_S)

    def _list(self) -> str:
        response = self._core.list_namespaced_pod(
            self.namespace, label_selector=self.selector, _preload_content=False,
            _request_timeout=(CONNECT_TIMEOUT_S, 30.0))
        listed = json.loads(response.data)
        present = {pod["metadata"]["name"]: pod for pod in listed.get("items") or []}
        for name, pod in list(self._known.items()):
            if name not in present:  # deleted while nobody watched
                self._seen("DELETED", pod)
        for pod in present.values():
            self._seen("MODIFIED", pod)
        return str(listed["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> str:
        """Follow events from ``version`` until the server ends the watch; the last
        version seen. Raises ApiException(410) when ``version`` is too old."""
        response = self._core.list_namespaced_pod(
            self.namespace, label_selector=self.selector, watch=True,
            resource_version=version, allow_watch_bookmarks=True, timeout_seconds=WATCH_S,
            _preload_content=False, _request_timeout=(CONNECT_TIMEOUT_S, WATCH_S + 15.0))
        self._response = response
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if self._stopping.is_set():
                    break
                event = json.loads(line)
                kind, pod = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise ApiException(status=int(pod.get("code") or 500),
                                       reason=str(pod.get("message") or pod.get("reason")))
                version = str(pod["metadata"]["resourceVersion"])
                if kind != "BOOKMARK":
                    self._seen(str(kind), pod)
        finally:
            self._response = None
            response.close()
            response.release_conn()
        return version

    def _seen(self, kind: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        if kind == "DELETED":
            self._known.pop(name, None)
        else:
            self._known[name] = pod
        try:
            self._tell(kind, pod)
        except Exception:  # a bug in the listener must not end the watch
            log.exception("pod watch in %s: telling %s of pod %s failed", self.namespace,
                          kind, name)
