"""The job's own user, apart from the agent's: what keeps a job from the agent's powers.

In a container or pod the agent runs as root, keeping only the capabilities it needs
(``AGENT_CAPABILITIES``) to run each job as another user (``HODEI_AGENT_JOB_USER``, the
image's uid 10001). The job then cannot read the agent's environment or memory
(``/proc/<agent>/environ`` is refused across users), signal it, or read its files. Unset,
the job runs as the agent's own user (the local provider: trusted code only).
"""

from __future__ import annotations

import ctypes
import os
import pwd
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from hodei_common.contracts.agent import AGENT_CAPABILITIES
from hodei_common.errors import ConfigError

_PR_SET_DUMPABLE = 4
# Bit numbers of linux/capability.h.
_CAPABILITY_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "KILL": 5, "SETGID": 6, "SETUID": 7}
_SPEC = re.compile(r"(\d+)(?::(\d+))?")
STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class JobUser:
    """The uid and gid a job runs as (it gets no supplementary groups)."""

    uid: int
    gid: int

    @classmethod
    def parse(cls, spec: str) -> JobUser:
        """``uid:gid``, or ``uid`` alone for a gid of the same number."""
        match = _SPEC.fullmatch(spec.strip())
        if match is None:
            raise ConfigError(f"HODEI_AGENT_JOB_USER must be uid[:gid] in numbers, not {spec!r}")
        uid = int(match[1])
        return cls(uid, int(match[2]) if match[2] is not None else uid)

    def account(self) -> dict[str, str]:
        """HOME, USER and LOGNAME of the uid's passwd entry; empty when it has none."""
        try:
            entry = pwd.getpwuid(self.uid)
        except KeyError:
            return {}
        return {"HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name}


def check_can_switch(user: JobUser) -> None:
    """Fail at start, in one clear line, where a job could not be handed to ``user`` (or
    would share the agent's uid, and with it the agent's environment and signals)."""
    needed = ", ".join(AGENT_CAPABILITIES)
    if os.geteuid() == user.uid:
        raise ConfigError(f"the agent runs as the job user ({user.uid}); it must run as "
                          f"another (root with {needed}) to keep jobs apart from it")
    if sys.platform != "linux":
        raise ConfigError("HODEI_AGENT_JOB_USER needs Linux (setpriv)")
    effective = _effective_capabilities()
    missing = [name for name in AGENT_CAPABILITIES if not effective >> _CAPABILITY_BITS[name] & 1]
    if missing:
        raise ConfigError(f"HODEI_AGENT_JOB_USER is set but the agent lacks the capabilities "
                          f"{', '.join(missing)} (it needs {needed}) to run jobs as it")


def _effective_capabilities() -> int:
    for line in STATUS.read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            return int(value.strip(), 16)
    return 0


def hand_over(workdir: Path, user: JobUser) -> None:
    """Make a fresh working directory the job user's (needs CAP_CHOWN as root)."""
    os.chown(workdir, user.uid, user.gid)


def forbid_dumping() -> None:
    """Make this process non-dumpable: its ``/proc`` files become root's and refuse ptrace
    to any uid, should a job ever share the agent's. Only with a job user: the local provider
    tells its own agents from others by their ``/proc/<pid>/environ``, which this would hide."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
