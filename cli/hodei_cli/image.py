"""Building the worker image (``hodei worker build-image``) from this source tree, offline.

The project's wheels, and those of its dependencies, are built on this machine
(``pip wheel``) and installed in the image with ``--no-index``, so the image build itself
needs no network. The base image is ``python:3.11-slim`` when it is here or can be pulled;
where no registry can be reached (or with ``--local-base``) a Debian base is made on this
machine with debootstrap and ``docker import``, once, and kept under its tag.

An image records the digest of the sources it was built from (label ``hodei.source``): a
build whose tag already holds the same sources is skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound

from hodei_common.errors import HodeiError

log = logging.getLogger(__name__)

DEFAULT_TAG = "hodei-agent:latest"
PUBLIC_BASE = "python:3.11-slim"
LOCAL_BASE = "hodei-base:bookworm"
DEBIAN_SUITE = "bookworm"  # its python3 is 3.11, as the wheels built here
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SOURCE_LABEL = "hodei.source"
PULL_TIMEOUT_S = 60
# What goes into the image, relative to the source root.
SOURCE_DIRS = ("libs", "migrations", "services", "agent", "cli")
SOURCE_FILES = ("pyproject.toml", "README.md")


class ImageBuildError(HodeiError):
    """The worker image could not be built; the message says what to do."""


def default_tag() -> str:
    """``HODEI_WORKER_IMAGE``, else ``hodei-agent:latest``."""
    return os.environ.get("HODEI_WORKER_IMAGE") or DEFAULT_TAG


def source_root() -> Path:
    """The source checkout this hodei runs from (an editable install)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "agent" / "Dockerfile").is_file():
            return parent
    raise ImageBuildError("the worker image is built from a source checkout of Hodei "
                          "(pip install -e .); agent/Dockerfile was not found")


def _source_files(root: Path) -> Iterator[Path]:
    for name in SOURCE_FILES:
        yield root / name
    for top in SOURCE_DIRS:
        for path in sorted((root / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc" \
                    and ".egg-info" not in str(path):
                yield path


def source_digest(root: Path) -> str:
    """sha256 over the paths and contents of everything the image is built from."""
    h = hashlib.sha256()
    for path in _source_files(root):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def build_worker_image(
    tag: str,
    *,
    base_image: str | None = None,
    local_base: bool = False,
    force: bool = False,
    say: Callable[[str], None] = print,
) -> str:
    """Build the worker image under ``tag`` unless it already holds these sources; return
    the base image used (or "" when nothing needed building)."""
    root = source_root()
    digest = source_digest(root)
    try:
        client = docker.from_env()
    except DockerException as e:
        raise ImageBuildError(f"cannot reach the Docker engine: {e}") from e
    try:
        if not force and _labels(client, tag).get(SOURCE_LABEL) == digest:
            say(f"{tag} is up to date")
            return ""
        previous = _image_id(client, tag)
        base = _choose_base(client, base_image, local_base, say)
        with tempfile.TemporaryDirectory(prefix="hodei-image-") as tmp:
            context = Path(tmp)
            say("building wheels of hodei and its dependencies ...")
            _build_wheels(root, context / "wheels")
            shutil.copy(root / "agent" / "Dockerfile", context / "Dockerfile")
            say(f"building {tag} from {base} ...")
            _docker_build(client, context, tag, base, digest)
        if previous is not None and previous != _image_id(client, tag):
            # The image the tag named before, now untagged: gone unless a container uses it.
            with contextlib.suppress(APIError):
                client.images.remove(previous)
        say(f"built {tag}")
        return base
    finally:
        client.close()


def _labels(client: docker.DockerClient, tag: str) -> dict[str, str]:
    try:
        image = client.images.get(tag)
    except ImageNotFound:
        return {}
    return dict(image.labels or {})


def _image_id(client: docker.DockerClient, tag: str) -> str | None:
    try:
        return str(client.images.get(tag).id)
    except ImageNotFound:
        return None


def _exists(client: docker.DockerClient, tag: str) -> bool:
    return _image_id(client, tag) is not None


def _choose_base(
    client: docker.DockerClient, base_image: str | None, local_base: bool,
    say: Callable[[str], None],
) -> str:
    if base_image is not None:
        if not _exists(client, base_image) and not _pulled(client, base_image, say):
            raise ImageBuildError(f"base image {base_image} is not here and cannot be pulled")
        return base_image
    if not local_base:
        if _exists(client, PUBLIC_BASE) or _pulled(client, PUBLIC_BASE, say):
            return PUBLIC_BASE
        say(f"no registry reachable for {PUBLIC_BASE}: using a local Debian base")
    return ensure_local_base(client, say)


def _pulled(client: docker.DockerClient, image: str, say: Callable[[str], None]) -> bool:
    say(f"pulling {image} ...")
    try:
        client.images.pull(image)
    except DockerException as e:
        log.info("pull of %s failed: %s", image, e)
        return False
    return True


def ensure_local_base(client: docker.DockerClient, say: Callable[[str], None] = print) -> str:
    """``hodei-base:bookworm``, made once with debootstrap (root) and ``docker import``."""
    if _exists(client, LOCAL_BASE):
        return LOCAL_BASE
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ImageBuildError("no registry is reachable and debootstrap is not installed: "
                              "apt-get install debootstrap, or pass --base-image")
    mirror = os.environ.get("HODEI_DEBIAN_MIRROR") or DEFAULT_MIRROR
    say(f"making {LOCAL_BASE} with debootstrap from {mirror} (about a minute) ...")
    with tempfile.TemporaryDirectory(prefix="hodei-base-") as tmp:
        rootfs, tarball = Path(tmp) / "root", Path(tmp) / "root.tar"
        _run([debootstrap, "--variant=minbase", "--include=python3,python3-venv",
              DEBIAN_SUITE, str(rootfs), mirror], "debootstrap")
        _run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], "tar")
        repository, _, tag = LOCAL_BASE.partition(":")
        client.api.import_image_from_file(str(tarball), repository=repository, tag=tag)
    return LOCAL_BASE


def _build_wheels(root: Path, into: Path) -> None:
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
          "--wheel-dir", str(into), str(root)], "pip wheel")


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ImageBuildError(f"{what} failed (exit {done.returncode}): {last[0]}")


def _docker_build(
    client: docker.DockerClient, context: Path, tag: str, base: str, digest: str
) -> None:
    # The low-level build is the classic builder: it never pulls, and needs no BuildKit.
    try:
        for chunk in client.api.build(path=str(context), tag=tag, rm=True, forcerm=True,
                                      pull=False, buildargs={"BASE_IMAGE": base},
                                      labels={SOURCE_LABEL: digest}, decode=True):
            _check_chunk(chunk)
    except APIError as e:
        raise ImageBuildError(f"docker build failed: {e.explanation or e}") from e


def _check_chunk(chunk: dict[str, Any]) -> None:
    if "error" in chunk:
        raise ImageBuildError(f"docker build failed: {str(chunk['error']).strip()}")
    text = str(chunk.get("stream", "")).strip()
    if text:
        log.debug("%s", text)
