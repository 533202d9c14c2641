"""PATCH bodies: JSON merge patch (strategic merge patch is read as one) and JSON patch."""

from __future__ import annotations

import copy
from typing import Any

from hodei_common.testing.kube.errors import ApiError, bad_request

MERGE = ("application/merge-patch+json", "application/strategic-merge-patch+json")
JSON_PATCH = "application/json-patch+json"


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path and not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _parent(doc: Any, parts: list[str]) -> Any:
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def json_patch(doc: Any, operations: list[dict[str, Any]]) -> Any:
    """RFC 6902: add, remove, replace, move, copy and test."""
    doc = copy.deepcopy(doc)
    for op in operations:
        try:
            doc = _apply(doc, op)
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ApiError(422, "Invalid", f"the server rejected our request due to an error "
                           f"in our request: {op.get('op')} {op.get('path')}: {e}") from e
    return doc


def _apply(doc: Any, op: dict[str, Any]) -> Any:
    kind, parts = op["op"], _pointer(op["path"])
    if kind == "test":
        target = doc
        for part in parts:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if target != op["value"]:
            raise ValueError("testing value failed")
        return doc
    if kind in ("move", "copy"):
        source = _pointer(op["from"])
        holder = _parent(doc, source)
        key: Any = int(source[-1]) if isinstance(holder, list) else source[-1]
        value = holder[key] if kind == "copy" else holder.pop(key)
        return _apply(doc, {"op": "add", "path": op["path"], "value": copy.deepcopy(value)})
    if not parts:
        return copy.deepcopy(op.get("value"))
    holder, last = _parent(doc, parts), parts[-1]
    if isinstance(holder, list):
        index = len(holder) if last == "-" else int(last)
        if kind == "add":
            holder.insert(index, copy.deepcopy(op["value"]))
        elif kind == "remove":
            holder.pop(index)
        else:
            holder[index] = copy.deepcopy(op["value"])
    elif kind == "add" or (kind == "replace" and last in holder):
        holder[last] = copy.deepcopy(op["value"])
    elif kind == "remove" or kind == "replace":
        del holder[last]  # KeyError when absent, as RFC 6902 asks
        if kind == "replace":
            holder[last] = copy.deepcopy(op["value"])
    else:
        raise ValueError(f"unknown op {kind!r}")
    return doc


def apply(content_type: str, target: Any, body: Any) -> Any:
    """The patched copy of ``target``; 415 for a patch type the stand-in does not know."""
    if content_type in MERGE:
        return merge(target, body)
    if content_type == JSON_PATCH:
        if not isinstance(body, list):
            raise bad_request("a JSON patch must be a list of operations")
        return json_patch(target, body)
    raise ApiError(415, "UnsupportedMediaType",
                   f'the body of the request was in an unknown format - accepted media types '
                   f'include: {", ".join((JSON_PATCH, *MERGE))}')
