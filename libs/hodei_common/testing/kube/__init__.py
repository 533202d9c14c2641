"""A Kubernetes stand-in for tests: an API server and a one-node kubelet on Docker.

The official ``kubernetes`` client talks to it over real HTTP with a generated kubeconfig.
Pods, secrets, events, namespaces and the node are served from memory with one global
resourceVersion, list and watch by label and field selectors, resume and 410 Expired; each
scheduled pod's first container runs as a Docker container of an image already on the
engine. Faults (failing creates, dropped or expired watches, evictions) are switched on from
the test through :class:`KubeStandIn`.

What it cannot catch, because it does not have it: admission (webhooks, quotas, limit ranges,
pod security), most of the real server's defaulting and validation (only what a provider's
pods and secrets use is checked), authentication and RBAC (any token passes), real
scheduling (one node; a pod's requests are checked alone against the node's allocatable,
not summed with the pods already there; no affinity, taints, priorities or preemption), pod
networking, services and DNS (every container shares the host's network, whatever
``hostNetwork`` says), image pulls and registries (images must be local), init and sidecar
containers (only the first container runs), volumes, probes, finalizers, server-side apply,
TLS, API groups other than core/v1 (and policy/v1 evictions), and a cluster that persists
across restarts (the state is in memory).
"""

from hodei_common.testing.kube.standin import KubeStandIn, StandInError, kube_standin

__all__ = ["KubeStandIn", "StandInError", "kube_standin"]
