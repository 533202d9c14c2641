"""Starting a local process that outlives the service: the agents, and their template."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path


def spawn_in_session(command: Sequence[str], env: Mapping[str, str], log_path: Path, *,
                     stdin: int | None = None) -> int:
    """Start ``command`` in a new session with exactly ``env``, stdin the descriptor
    ``stdin`` (default: /dev/null), stdout and stderr appended to ``log_path`` (made 0600);
    its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    stdin_action = ((os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0) if stdin is None
                    else (os.POSIX_SPAWN_DUP2, stdin, 0))
    try:
        # posix_spawn, not asyncio's subprocess transport: a transport kills its child when it
        # is closed or collected, and agents must outlive a stopping service.
        return os.posix_spawnp(
            command[0], list(command), dict(env),
            file_actions=[stdin_action, (os.POSIX_SPAWN_DUP2, fd, 1),
                          (os.POSIX_SPAWN_DUP2, fd, 2)],
            setsid=True,
        )
    finally:
        os.close(fd)
