"""The API server's routes (aiohttp): discovery, pods, secrets, events, namespaces, nodes."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from hodei_common.testing.kube import patch as patches
from hodei_common.testing.kube import pods as podlib
from hodei_common.testing.kube.cluster import KINDS, Cluster, normalise_secret
from hodei_common.testing.kube.errors import ApiError, bad_request, conflict
from hodei_common.testing.kube.node import KUBELET_VERSION
from hodei_common.testing.kube.selectors import FieldSelector, LabelSelector
from hodei_common.testing.kube.watch import stream, wants_watch

Obj = dict[str, Any]
CLUSTER: web.AppKey[Cluster] = web.AppKey("cluster", Cluster)
_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
RESOURCES = [
    {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod", "verbs": _VERBS,
     "shortNames": ["po"]},
    {"name": "pods/status", "singularName": "", "namespaced": True, "kind": "Pod",
     "verbs": ["get", "patch", "update"]},
    {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]},
    {"name": "pods/binding", "singularName": "", "namespaced": True, "kind": "Binding",
     "verbs": ["create"]},
    {"name": "pods/eviction", "singularName": "", "namespaced": True, "group": "policy",
     "version": "v1", "kind": "Eviction", "verbs": ["create"]},
    {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret",
     "verbs": _VERBS},
    {"name": "events", "singularName": "event", "namespaced": True, "kind": "Event",
     "verbs": ["create", "get", "list", "watch"], "shortNames": ["ev"]},
    {"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace",
     "verbs": ["create", "delete", "get", "list", "watch"], "shortNames": ["ns"]},
    {"name": "nodes", "singularName": "node", "namespaced": False, "kind": "Node",
     "verbs": ["get", "list", "watch"], "shortNames": ["no"]},
]
_KIND_RE = "{kind:pods|secrets|events}"


def _json(body: Obj, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def _success(kind: str, name: str, uid: str) -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "kind": kind, "uid": uid}}


async def _body(request: web.Request) -> Any:
    if not request.can_read_body:
        return None
    try:
        return json.loads(await request.read() or b"null")
    except ValueError as e:
        raise bad_request(f"the request body is not JSON: {e}") from None


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Answer every refusal with a ``Status`` object, as the real server does."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as e:
        return _json(e.status(), e.code)
    except web.HTTPNotFound:
        return _json(ApiError(404, "NotFound",
                              "the server could not find the requested resource").status(), 404)
    except web.HTTPMethodNotAllowed as e:
        return _json(ApiError(405, "MethodNotAllowed", str(e)).status(), 405)


async def version(request: web.Request) -> web.Response:
    return _json({"major": "1", "minor": "32", "gitVersion": KUBELET_VERSION,
                  "gitCommit": "0" * 40, "gitTreeState": "clean",
                  "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23", "compiler": "gc",
                  "platform": "linux/amd64"})


async def api_versions(request: web.Request) -> web.Response:
    return _json({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
        {"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}]})


async def core_resources(request: web.Request) -> web.Response:
    return _json({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
                  "resources": RESOURCES})


async def api_groups(request: web.Request) -> web.Response:
    version_ = {"groupVersion": "policy/v1", "version": "v1"}
    return _json({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": "policy", "versions": [version_], "preferredVersion": version_}]})


async def policy_resources(request: web.Request) -> web.Response:
    return _json({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "policy/v1",
                  "resources": []})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def _cluster(request: web.Request) -> Cluster:
    return request.app[CLUSTER]


async def list_or_watch(request: web.Request) -> web.StreamResponse:
    """GET on a collection: a list, or a watch with ``watch=1``."""
    cluster = _cluster(request)
    kind = request.match_info.get("kind") or request.path.rstrip("/").rsplit("/", 1)[-1]
    namespace = request.match_info.get("ns")
    if namespace is not None:
        cluster.require_namespace(namespace)
    if wants_watch(request):
        return await stream(request, cluster.store, kind, namespace)
    items, rv = cluster.store.list(
        kind, namespace, LabelSelector.parse(request.query.get("labelSelector")),
        FieldSelector.parse(request.query.get("fieldSelector"), kind))
    return _json({"kind": f"{KINDS[kind]}List", "apiVersion": "v1",
                  "metadata": {"resourceVersion": rv}, "items": items})


async def get_one(request: web.Request) -> web.Response:
    kind = request.match_info.get("kind") or \
        ("pods" if "ns" in request.match_info else request.path.split("/")[3])
    obj = _cluster(request).store.get(kind, request.match_info.get("ns", ""),
                                      request.match_info["name"])
    return _json(obj)


async def create(request: web.Request) -> web.Response:
    body = await _body(request)
    if not isinstance(body, dict):
        raise bad_request("the request body must be an object")
    cluster = _cluster(request)
    kind = request.match_info["kind"]
    return _json(cluster.create(kind, request.match_info["ns"], body), 201)


async def _grace(request: web.Request) -> int | None:
    body = await _body(request)
    grace = (body or {}).get("gracePeriodSeconds") if isinstance(body, dict) else None
    if "gracePeriodSeconds" in request.query:
        grace = request.query["gracePeriodSeconds"]
    return None if grace is None else int(grace)


async def delete(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    kind, ns, name = request.match_info["kind"], request.match_info["ns"], \
        request.match_info["name"]
    if kind == "pods":
        return _json(await cluster.delete_pod(ns, name, await _grace(request)))
    gone = cluster.store.remove(kind, ns, name)
    return _json(_success(kind, name, gone["metadata"]["uid"]))


async def delete_collection(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    kind, ns = request.match_info["kind"], request.match_info["ns"]
    items, _ = cluster.store.list(
        kind, ns, LabelSelector.parse(request.query.get("labelSelector")),
        FieldSelector.parse(request.query.get("fieldSelector"), kind))
    grace = await _grace(request)
    for obj in items:
        if kind == "pods":
            await cluster.delete_pod(ns, obj["metadata"]["name"], grace)
        else:
            cluster.store.remove(kind, ns, obj["metadata"]["name"])
    return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})


def _check_version(kind: str, old: Obj, new: Obj) -> None:
    wanted = (new.get("metadata") or {}).get("resourceVersion")
    if wanted and wanted != old["metadata"]["resourceVersion"]:
        raise conflict(kind, old["metadata"]["name"], "the object has been modified; please "
                       "apply your changes to the latest version and try again")


def _merged(kind: str, old: Obj, new: Obj, status_only: bool) -> Obj:
    """``new`` as the server stores it: identity kept, and status or spec left alone by the
    write that may not change them."""
    if not isinstance(new, dict):
        raise bad_request("the patched object is not an object")
    _check_version(kind, old, new)
    if status_only:
        return {**old, "status": new.get("status", old.get("status"))}
    meta = dict(new.get("metadata") or {})
    for key in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                "deletionGracePeriodSeconds"):
        if key in old["metadata"]:
            meta[key] = old["metadata"][key]
    result = {**new, "metadata": meta, "apiVersion": "v1", "kind": old["kind"]}
    if kind == "pods":
        # A pod's spec is immutable in the few ways a provider cares about; status has its
        # own subresource.
        result.update(spec=old["spec"], status=old["status"])
    if kind == "secrets":
        result = normalise_secret(result)
    return result


async def write(request: web.Request) -> web.Response:
    """PUT or PATCH of an object or of a pod's status."""
    cluster = _cluster(request)
    kind = request.match_info.get("kind", "pods")
    ns, name = request.match_info["ns"], request.match_info["name"]
    old = cluster.store.get(kind, ns, name)
    body = await _body(request)
    new = body if request.method == "PUT" else \
        patches.apply(request.content_type, old, body)
    result = _merged(kind, old, new, request.path.endswith("/status"))
    return _json(cluster.store.update(kind, result))


async def pod_log(request: web.Request) -> web.StreamResponse:
    cluster = _cluster(request)
    ns, name = request.match_info["ns"], request.match_info["name"]
    pod = cluster.store.get("pods", ns, name)
    container = pod["spec"]["containers"][0]["name"]
    wanted = request.query.get("container", container)
    if wanted != container:
        raise bad_request(f"container {wanted} is not valid for pod {name}")
    tail = int(request.query["tailLines"]) if "tailLines" in request.query else None
    timestamps = request.query.get("timestamps", "").lower() in ("1", "true")
    container_id = cluster.kubelet.container_of(pod["metadata"]["uid"])
    text = None
    if container_id is not None and request.query.get("follow", "").lower() in ("1", "true"):
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        async for chunk in cluster.kubelet.logs.follow(container_id, tail=tail,
                                                       timestamps=timestamps):
            await response.write(chunk)
        await response.write_eof()
        return response
    if container_id is not None:
        text = await cluster.kubelet.logs.read(container_id, tail=tail, timestamps=timestamps)
    if text is None:
        statuses = pod["status"].get("containerStatuses") or [{}]
        reason = (statuses[0].get("state", {}).get("waiting") or {}).get("reason", "Pending")
        raise bad_request(f'container "{container}" in pod "{name}" is waiting to start: '
                          f"{reason}")
    return web.Response(body=text, content_type="text/plain")


async def binding(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    body = await _body(request) or {}
    name = request.match_info.get("name") or (body.get("metadata") or {}).get("name", "")
    pod = cluster.store.get("pods", request.match_info["ns"], name)
    cluster.bind(pod, str((body.get("target") or {}).get("name", "")))
    return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                  "code": 201}, 201)


async def eviction(request: web.Request) -> web.Response:
    """An API-initiated eviction (policy/v1): no PodDisruptionBudget holds it back."""
    cluster = _cluster(request)
    ns, name = request.match_info["ns"], request.match_info["name"]
    pod = cluster.store.get("pods", ns, name)
    if pod["status"]["phase"] not in podlib.TERMINAL:
        podlib.set_condition(pod, "DisruptionTarget", True, "EvictionByEvictionAPI",
                             "Eviction API: evicting")
        cluster.store.update("pods", pod)
    await cluster.delete_pod(ns, name, await _grace_of_eviction(request))
    return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                  "code": 201}, 201)


async def _grace_of_eviction(request: web.Request) -> int | None:
    body = await _body(request) or {}
    grace = (body.get("deleteOptions") or {}).get("gracePeriodSeconds")
    return None if grace is None else int(grace)


async def create_namespace(request: web.Request) -> web.Response:
    body = await _body(request)
    if not isinstance(body, dict):
        raise bad_request("the request body must be an object")
    return _json(_cluster(request).create_namespace(body), 201)


async def delete_namespace(request: web.Request) -> web.Response:
    ns = await _cluster(request).delete_namespace(request.match_info["name"])
    return _json(_success("namespaces", ns["metadata"]["name"], ns["metadata"]["uid"]))


def routes(app: web.Application) -> None:
    """Add the Kubernetes API's routes to ``app``."""
    r = app.router
    for path, handler in (("/version", version), ("/healthz", healthz), ("/readyz", healthz),
                          ("/livez", healthz), ("/api", api_versions), ("/api/v1", core_resources),
                          ("/apis", api_groups), ("/apis/policy/v1", policy_resources)):
        r.add_get(path, handler)
        r.add_get(path + "/", handler)  # the client asks for some with a trailing slash
    r.add_get("/api/v1/namespaces", list_or_watch)
    r.add_post("/api/v1/namespaces", create_namespace)
    r.add_get("/api/v1/namespaces/{name}", get_one)
    r.add_delete("/api/v1/namespaces/{name}", delete_namespace)
    r.add_get("/api/v1/nodes", list_or_watch)
    r.add_get("/api/v1/nodes/{name}", get_one)
    r.add_get(f"/api/v1/{_KIND_RE}", list_or_watch)
    base = f"/api/v1/namespaces/{{ns}}/{_KIND_RE}"
    r.add_get(base, list_or_watch)
    r.add_post(base, create)
    r.add_delete(base, delete_collection)
    r.add_get(base + "/{name}", get_one)
    r.add_put(base + "/{name}", write)
    r.add_patch(base + "/{name}", write)
    r.add_delete(base + "/{name}", delete)
    pod = "/api/v1/namespaces/{ns}/pods/{name}"
    r.add_get(pod + "/status", get_one)
    r.add_put(pod + "/status", write)
    r.add_patch(pod + "/status", write)
    r.add_get(pod + "/log", pod_log)
    r.add_post(pod + "/binding", binding)
    r.add_post("/api/v1/namespaces/{ns}/bindings", binding)
    r.add_post(pod + "/eviction", eviction)
