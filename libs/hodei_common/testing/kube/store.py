"""Objects by kind, one global resourceVersion, a bounded change history and watch fan-out.

Everything here runs on the event loop's thread, so nothing is locked. Objects go in and come
out as deep copies: a caller can never change what the store holds behind its back.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hodei_common.testing.kube.errors import already_exists, expired, not_found
from hodei_common.testing.kube.selectors import FieldSelector, LabelSelector

Obj = dict[str, Any]
HISTORY = 10_000


def now() -> str:
    """The current time as Kubernetes writes it (RFC 3339, seconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def gone_status(message: str) -> Obj:
    return expired(message).status()


@dataclass
class Change:
    rv: int
    kind: str
    type: str
    obj: Obj
    old: Obj | None


@dataclass(eq=False)
class Watcher:
    """One open watch: the events it is owed, queued; ``None`` ends it cleanly."""

    kind: str
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    queue: asyncio.Queue[Obj | None] = field(default_factory=asyncio.Queue)
    abort: Callable[[], None] = lambda: None

    def _selects(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        return self.labels.matches(obj) and self.fields.matches(obj)

    def offer(self, change: Change) -> None:
        """Queue what this watch sees of ``change``: an object leaving its selection reads as
        DELETED and one entering it as ADDED, as the real server reports them."""
        if change.kind != self.kind:
            return
        now_in, was_in = self._selects(change.obj), self._selects(change.old)
        if change.type == "DELETED":
            kind = "DELETED" if now_in else None
        elif now_in:
            kind = "MODIFIED" if change.type == "MODIFIED" and was_in else "ADDED"
        else:
            kind = "DELETED" if was_in else None
        if kind is not None:
            self.queue.put_nowait({"type": kind, "object": change.obj})


class Store:
    """The cluster's objects, keyed by kind then ``(namespace, name)``."""

    def __init__(self) -> None:
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {}
        self._rv = 0
        self._history: deque[Change] = deque(maxlen=HISTORY)
        self._compacted = 0  # a watch resuming from a version below this one gets 410
        self.watchers: set[Watcher] = set()

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    def find(self, kind: str, namespace: str, name: str) -> Obj | None:
        found = self._objects.get(kind, {}).get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def get(self, kind: str, namespace: str, name: str) -> Obj:
        found = self.find(kind, namespace, name)
        if found is None:
            raise not_found(kind, name)
        return found

    def items(self, kind: str, namespace: str | None = None) -> Iterator[Obj]:
        """Every object of ``kind`` (in ``namespace`` when given), oldest first, as copies."""
        for (ns, _), obj in list(self._objects.get(kind, {}).items()):
            if namespace is None or ns == namespace:
                yield copy.deepcopy(obj)

    def list(self, kind: str, namespace: str | None, labels: LabelSelector,
             fields: FieldSelector) -> tuple[list[Obj], str]:
        """The matching objects and the list's resourceVersion."""
        found = [obj for obj in self.items(kind, namespace)
                 if labels.matches(obj) and fields.matches(obj)]
        return found, self.resource_version

    def create(self, kind: str, obj: Obj) -> Obj:
        """Store a new object: uid, creationTimestamp and resourceVersion assigned."""
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        if key in self._objects.setdefault(kind, {}):
            raise already_exists(kind, meta["name"])
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        return self._commit(kind, key, obj, "ADDED", None)

    def update(self, kind: str, obj: Obj) -> Obj:
        """Replace a stored object (MODIFIED)."""
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        old = self._objects.get(kind, {}).get(key)
        if old is None:
            raise not_found(kind, meta["name"])
        return self._commit(kind, key, obj, "MODIFIED", old)

    def remove(self, kind: str, namespace: str, name: str) -> Obj:
        """Delete a stored object (DELETED, at a new resourceVersion)."""
        old = self._objects.get(kind, {}).pop((namespace, name), None)
        if old is None:
            raise not_found(kind, name)
        gone = copy.deepcopy(old)
        self._rv += 1
        gone["metadata"]["resourceVersion"] = str(self._rv)
        self._publish(Change(self._rv, kind, "DELETED", gone, old))
        return copy.deepcopy(gone)

    def _commit(self, kind: str, key: tuple[str, str], obj: Obj, type_: str,
                old: Obj | None) -> Obj:
        self._rv += 1
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(self._rv)
        self._objects[kind][key] = stored
        self._publish(Change(self._rv, kind, type_, stored, old))
        return copy.deepcopy(stored)

    def _publish(self, change: Change) -> None:
        if len(self._history) == self._history.maxlen:
            self._compacted = self._history[0].rv
        self._history.append(change)
        for watcher in list(self.watchers):
            watcher.offer(change)

    def watch(self, kind: str, namespace: str | None, labels: LabelSelector,
              fields: FieldSelector, since: str | None) -> Watcher:
        """A watcher primed with what it is owed: every current object as ADDED when ``since``
        is empty or "0", else every later change; 410 Expired when ``since`` was compacted."""
        watcher = Watcher(kind, namespace, labels, fields)
        if not since or since == "0":
            for obj in self.items(kind, namespace):
                if watcher._selects(obj):
                    watcher.queue.put_nowait({"type": "ADDED", "object": obj})
        else:
            try:
                start = int(since)
            except ValueError:
                start = -1
            if start < self._compacted:
                watcher.queue.put_nowait({"type": "ERROR", "object": gone_status(
                    f"too old resource version: {since} ({self._compacted + 1})")})
                watcher.queue.put_nowait(None)
                return watcher
            for change in self._history:
                if change.rv > start:
                    watcher.offer(change)
        self.watchers.add(watcher)
        return watcher

    def expire_watches(self) -> int:
        """Tell every watch its resourceVersion expired and forget every version up to now."""
        # Versions below this one are gone; the tick makes a fresh list's version watchable.
        self._rv += 1
        self._compacted = self._rv
        self._history.clear()
        for watcher in list(self.watchers):
            watcher.queue.put_nowait({"type": "ERROR", "object": gone_status(
                "The resourceVersion for the provided watch is too old.")})
            watcher.queue.put_nowait(None)
        return len(self.watchers)

    def drop_watches(self) -> int:
        """Cut every watch connection, as a crashed or restarted server would."""
        dropped = list(self.watchers)
        for watcher in dropped:
            watcher.abort()
        return len(dropped)

    def end_watches(self) -> None:
        """End every watch cleanly (on shutdown)."""
        for watcher in list(self.watchers):
            watcher.queue.put_nowait(None)
