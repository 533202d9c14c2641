"""Label and field selectors, parsed from query strings and matched against objects."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hodei_common.testing.kube.errors import bad_request

Obj = dict[str, Any]

_SET_RE = re.compile(r"^\s*(\S+)\s+(in|notin)\s*\(([^)]*)\)\s*$")
_OP_RE = re.compile(r"^\s*([^=!<>\s]+)\s*(==|!=|=|<|>)\s*(\S*)\s*$")

# The fields each kind may be selected by; the real server refuses any other one.
FIELDS = {
    "pods": {"metadata.name", "metadata.namespace", "spec.nodeName", "spec.restartPolicy",
             "spec.schedulerName", "spec.serviceAccountName", "status.phase", "status.podIP",
             "status.nominatedNodeName"},
    "secrets": {"metadata.name", "metadata.namespace", "type"},
    "events": {"metadata.name", "metadata.namespace", "involvedObject.kind",
               "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
               "involvedObject.apiVersion", "involvedObject.resourceVersion",
               "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"},
    "namespaces": {"metadata.name", "status.phase"},
    "nodes": {"metadata.name", "spec.unschedulable"},
}

Requirement = Callable[[Mapping[str, str]], bool]


def _split(text: str) -> list[str]:
    """Split on the commas that are not inside a ``(...)`` value set."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def _requirement(term: str) -> Requirement:
    if m := _SET_RE.match(term):
        key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _OP_RE.match(term):
        key, op, value = m.groups()
        if op in ("=", "=="):
            return lambda labels: labels.get(key) == value
        if op == "!=":
            return lambda labels: labels.get(key) != value
        try:
            bound = int(value)
        except ValueError:
            raise bad_request(f"unable to parse requirement: {term!r}") from None
        if op == ">":
            return lambda labels: _int(labels.get(key)) > bound
        return lambda labels: _int(labels.get(key)) < bound
    if term.startswith("!") and re.fullmatch(r"![^\s=!(),]+", term):
        return lambda labels: term[1:] not in labels
    if re.fullmatch(r"[^\s=!(),]+", term):
        return lambda labels: term in labels
    raise bad_request(f"unable to parse requirement: {term!r}")


def _int(value: str | None) -> float:
    try:
        return int(value) if value is not None else float("nan")
    except ValueError:
        return float("nan")


@dataclass(frozen=True)
class LabelSelector:
    """A parsed ``labelSelector``: every requirement must hold."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        return cls(tuple(_requirement(term) for term in _split(text or "")))

    def matches(self, obj: Obj) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(requirement(labels) for requirement in self.requirements)


def field_value(obj: Obj, path: str) -> str:
    """The value at a dotted path as a field selector sees it ('' when absent)."""
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None or isinstance(value, dict | list) else str(value)


@dataclass(frozen=True)
class FieldSelector:
    """A parsed ``fieldSelector``: ``path=value``/``==``/``!=`` terms, all of which must hold."""

    terms: tuple[tuple[str, bool, str], ...] = ()

    @classmethod
    def parse(cls, text: str | None, kind: str) -> FieldSelector:
        terms = []
        for term in _split(text or ""):
            m = re.fullmatch(r"([^=!]+)(==|!=|=)(.*)", term)
            if m is None:
                raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
            path, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
            if path not in FIELDS.get(kind, set()):
                raise bad_request(
                    f'field label not supported: {path}' if kind != "events"
                    else f'"{path}" is not a known field selector: only '
                         f'"{", ".join(sorted(FIELDS["events"]))}"')
            terms.append((path, op != "!=", value))
        return cls(tuple(terms))

    def matches(self, obj: Obj) -> bool:
        return all((field_value(obj, path) == value) == equal
                   for path, equal, value in self.terms)
