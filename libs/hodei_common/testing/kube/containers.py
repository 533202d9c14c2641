"""A pod's first container as a Docker container config, or the kubelet's reason it cannot be.

Every call to the engine is a blocking request of the ``docker`` SDK; these functions run in
the kubelet's threads.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Callable
from typing import Any

from docker.errors import APIError, ImageNotFound

from hodei_common.testing.kube import quantity

Obj = dict[str, Any]
LABEL_INSTANCE = "hodei.standin"
LABEL_POD = "hodei.standin.pod"
LABEL_UID = "hodei.standin.uid"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"{_HOST_PART}(?:\.{_HOST_PART})*"
_REFERENCE = re.compile(
    rf"^(?:{_DOMAIN}(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$")


class ContainerError(Exception):
    """Why the kubelet cannot create the container: a waiting reason and its message."""

    def __init__(self, reason: str, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry = retry


def check_reference(image: str) -> None:
    if not _REFERENCE.match(image):
        raise ContainerError(
            "InvalidImageName", f'Failed to apply default image tag "{image}": couldn\'t parse '
            f'image name "{image}": invalid reference format', retry=False)


def inspect_image(api: Any, image: str) -> Obj:
    """The local image (the stand-in never pulls); ErrImagePull when it is absent."""
    try:
        return dict(api.inspect_image(image))
    except ImageNotFound:
        raise ContainerError("ErrImagePull", f'rpc error: code = NotFound desc = failed to pull '
                             f'and unpack image "{image}": not found') from None


def _field(pod: Obj, path: str) -> str:
    meta = pod["metadata"]
    if m := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    values = {
        "metadata.name": meta["name"], "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""), "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.podIP": pod["status"].get("podIP", ""),
        "status.hostIP": pod["status"].get("hostIP", ""),
    }
    return str(values.get(path, ""))


def _secret_value(secret: Obj, key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode("utf-8", errors="replace")


def environment(pod: Obj, container: Obj, find_secret: Callable[[str], Obj | None]) -> list[str]:
    """``NAME=value`` for the container's ``envFrom`` and ``env``, secrets and fields resolved."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("secretRef") or source.get("configMapRef")
        kind = "secret" if source.get("secretRef") else "configmap"
        secret = find_secret(ref["name"]) if kind == "secret" else None
        if secret is None:
            if ref.get("optional"):
                continue
            raise ContainerError("CreateContainerConfigError", f'{kind} "{ref["name"]}" not found')
        for key in secret.get("data") or {}:
            env[source.get("prefix", "") + key] = _secret_value(secret, key)
    for var in container.get("env") or []:
        value = _env_value(pod, var, find_secret)
        if value is not None:
            env[var["name"]] = value
    return [f"{name}={value}" for name, value in env.items()]


def _env_value(pod: Obj, var: Obj, find_secret: Callable[[str], Obj | None]) -> str | None:
    """One ``env`` entry's value; None for an optional reference to nothing."""
    source = var.get("valueFrom")
    if source is None:
        return str(var.get("value", ""))
    if "fieldRef" in source:
        return _field(pod, source["fieldRef"]["fieldPath"])
    if ref := source.get("secretKeyRef"):
        secret = find_secret(ref["name"])
        if secret is None or ref["key"] not in (secret.get("data") or {}):
            if ref.get("optional"):
                return None
            raise ContainerError(
                "CreateContainerConfigError", f'secret "{ref["name"]}" not found'
                if secret is None else f"couldn't find key {ref['key']} in Secret "
                f"{pod['metadata'].get('namespace', '')}/{ref['name']}")
        return _secret_value(secret, ref["key"])
    if (ref := source.get("configMapKeyRef")) and not ref.get("optional"):
        raise ContainerError("CreateContainerConfigError", f'configmap "{ref["name"]}" not found')
    return None


def _user(pod: Obj, container: Obj, image_user: str) -> str | None:
    """Docker's ``user`` from the security contexts; CreateContainerConfigError when
    runAsNonRoot cannot hold."""
    pod_sc, sc = pod["spec"].get("securityContext") or {}, container.get("securityContext") or {}
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    where = f'(pod: "{pod["metadata"]["name"]}_{pod["metadata"].get("namespace", "")}' \
            f'({pod["metadata"].get("uid", "")})", container: {container["name"]})'
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
        name = image_user.split(":", 1)[0]
        if uid == 0:
            raise ContainerError("CreateContainerConfigError",
                                 f"container's runAsUser breaks non-root policy {where}")
        if uid is None and name in ("", "0", "root"):
            raise ContainerError("CreateContainerConfigError",
                                 f"container has runAsNonRoot and image will run as root {where}")
        if uid is None and not name.isdigit():
            raise ContainerError(
                "CreateContainerConfigError", f"container has runAsNonRoot and image has "
                f"non-numeric user ({name}), cannot verify user is non-root {where}")
    if uid is None and gid is None:
        return None
    user = str(uid) if uid is not None else (image_user.split(":", 1)[0] or "0")
    return f"{user}:{gid}" if gid is not None else user


def create_args(pod: Obj, image: Obj, env: list[str], instance: str) -> Obj:
    """Keyword arguments of ``APIClient.create_container`` for the pod's first container;
    ``host_config`` is a dict of ``create_host_config`` arguments."""
    meta, container = pod["metadata"], pod["spec"]["containers"][0]
    sc = container.get("securityContext") or {}
    limits = (container.get("resources") or {}).get("limits") or {}
    host: Obj = {"network_mode": "host", "privileged": bool(sc.get("privileged")),
                 "read_only": bool(sc.get("readOnlyRootFilesystem"))}
    if "memory" in limits:
        # The same swap limit: a container over its memory limit is OOM-killed, not swapped.
        host["mem_limit"] = host["memswap_limit"] = int(quantity.parse(limits["memory"]))
    if "cpu" in limits:
        host["nano_cpus"] = int(quantity.parse(limits["cpu"]) * 10**9)
    if sc.get("allowPrivilegeEscalation") is False:
        # What the container runtime does for it: no setuid bit or file capability counts.
        host["security_opt"] = ["no-new-privileges"]
    caps = sc.get("capabilities") or {}
    if caps.get("add"):
        host["cap_add"] = caps["add"]
    if caps.get("drop"):
        host["cap_drop"] = caps["drop"]
    groups = (pod["spec"].get("securityContext") or {}).get("supplementalGroups")
    if groups:
        host["group_add"] = [str(g) for g in groups]
    args: Obj = {
        "image": container["image"], "environment": env, "detach": True,
        "name": f"k8s-standin-{instance}-{meta['namespace']}-{meta['name']}-{meta['uid'][:8]}",
        "labels": {LABEL_INSTANCE: instance, LABEL_POD: f"{meta['namespace']}/{meta['name']}",
                   LABEL_UID: meta["uid"]},
        "working_dir": container.get("workingDir"), "host_config": host,
        "user": _user(pod, container, (image.get("Config") or {}).get("User") or ""),
    }
    # Kubernetes' command replaces the entrypoint and drops the image's CMD; args replace CMD.
    if container.get("command"):
        args["entrypoint"] = container["command"]
        args["command"] = container.get("args") or []
    elif container.get("args"):
        args["command"] = container["args"]
    return args


def remove_all(api: Any, instance: str) -> int:
    """Force-remove every container labelled with the stand-in ``instance``; how many."""
    found = api.containers(all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"})
    for container in found:
        with contextlib.suppress(APIError):  # gone already, or its removal under way
            api.remove_container(container["Id"], force=True)
    return len(found)
