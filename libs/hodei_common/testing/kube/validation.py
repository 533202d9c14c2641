"""What the real API server refuses with 422 Invalid, for the fields a provider sets."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from hodei_common.testing.kube import quantity
from hodei_common.testing.kube.errors import invalid

Obj = dict[str, Any]
Causes = list[tuple[str, str]]

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
DNS_LABEL = re.compile(rf"^{_LABEL}$")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")

SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                 "characters, '-' or '.', and must start and end with an alphanumeric character "
                 "(e.g. 'example.com', regex used for validation is "
                 "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
             "'-', and must start and end with an alphanumeric character (e.g. 'my-name',  or "
             "'123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
QUALIFIED_MSG = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must "
                 "start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  "
                 "or '123-abc', regex used for validation is "
                 "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
VALUE_MSG = ("a valid label must be an empty string or consist of alphanumeric characters, '-', "
             "'_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',"
             "  or 'my_value',  or '12345', regex used for validation is "
             "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")


def _name(value: str, causes: Causes, field: str, *, label: bool = False) -> None:
    pattern, message, limit = (DNS_LABEL, LABEL_MSG, 63) if label else \
        (SUBDOMAIN, SUBDOMAIN_MSG, 253)
    if not value:
        causes.append((field, "Required value: name or generateName is required"))
    elif len(value) > limit or not pattern.match(value):
        causes.append((field, f'Invalid value: "{value}": {message}'))


def _labels(meta: Obj, causes: Causes) -> None:
    for key, value in (meta.get("labels") or {}).items():
        prefix, _, name = key.rpartition("/")
        if (prefix and (len(prefix) > 253 or not SUBDOMAIN.match(prefix))) \
                or len(name) > 63 or not _QUALIFIED.match(name):
            causes.append(("metadata.labels", f'Invalid value: "{key}": {QUALIFIED_MSG}'))
        if not isinstance(value, str) or len(value) > 63 \
                or (value and not _QUALIFIED.match(value)):
            causes.append(("metadata.labels", f'Invalid value: "{value}": {VALUE_MSG}'))


def _metadata(obj: Obj, causes: Causes, *, label_name: bool = False) -> str:
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    _name(name, causes, "metadata.name", label=label_name)
    _labels(meta, causes)
    return name


def _resources(resources: Obj, field: str, causes: Causes) -> None:
    for section in ("limits", "requests"):
        for resource, amount in (resources.get(section) or {}).items():
            try:
                value = quantity.parse(amount)
            except ValueError as e:
                causes.append((f"{field}.{section}[{resource}]", f'Invalid value: "{amount}": {e}'))
                continue
            if value < 0:
                causes.append((f"{field}.{section}[{resource}]",
                               f'Invalid value: "{amount}": must be greater than or equal to 0'))


def check_pod(pod: Obj) -> None:
    """Raise 422 Invalid for a pod the real server would refuse."""
    causes: Causes = []
    name = _metadata(pod, causes)
    containers = (pod.get("spec") or {}).get("containers") or []
    if not containers:
        causes.append(("spec.containers", "Required value"))
    seen: set[str] = set()
    for i, container in enumerate(containers):
        field = f"spec.containers[{i}]"
        cname = str(container.get("name") or "")
        if not cname:
            causes.append((f"{field}.name", "Required value"))
        elif len(cname) > 63 or not DNS_LABEL.match(cname):
            causes.append((f"{field}.name", f'Invalid value: "{cname}": {LABEL_MSG}'))
        elif cname in seen:
            causes.append((f"{field}.name", f'Duplicate value: "{cname}"'))
        seen.add(cname)
        if not container.get("image"):
            causes.append((f"{field}.image", "Required value"))
        _resources(container.get("resources") or {}, f"{field}.resources", causes)
        for j, env in enumerate(container.get("env") or []):
            if not env.get("name"):
                causes.append((f"{field}.env[{j}].name", "Required value"))
    if causes:
        raise invalid("Pod", "pods", name, causes)


def check_secret(secret: Obj) -> None:
    """Raise 422 Invalid for a secret the real server would refuse."""
    causes: Causes = []
    name = _metadata(secret, causes)
    for key, value in (secret.get("data") or {}).items():
        if not _SECRET_KEY.match(key):
            causes.append((f"data[{key}]", f'Invalid value: "{key}": a valid config key must '
                           "consist of alphanumeric characters, '-', '_' or '.'"))
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError):
            causes.append((f"data[{key}]", "Invalid value: illegal base64 data"))
    if causes:
        raise invalid("Secret", "secrets", name, causes)


def check_namespace(namespace: Obj) -> None:
    """Raise 422 Invalid for a namespace name that is not a DNS-1123 label."""
    causes: Causes = []
    name = _metadata(namespace, causes, label_name=True)
    if causes:
        raise invalid("Namespace", "namespaces", name, causes)
