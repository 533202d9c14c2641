"""Turning CLI flags into request fields, with one clear line for each bad input."""

from __future__ import annotations

import enum
import re
import shlex
import time
import uuid
from datetime import datetime
from typing import TypeVar

from hodei_cli.logview import Since
from hodei_common.contracts.jobs import (
    MAX_CPUS,
    MAX_MEMORY_BYTES,
    MAX_TIMEOUT_S,
    MIN_CPUS,
    MIN_MEMORY_BYTES,
)
from hodei_common.contracts.logs import LogStream
from hodei_common.errors import ValidationError

E = TypeVar("E", bound=enum.StrEnum)
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_LINE = re.compile(r"^(?:(\d+):)?(\d+)$")
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
SINCE_HELP = ("a line number (120, or ATTEMPT:LINE like 2:120), a duration (90s, 5m, 1h30m) "
              "or a timestamp (2024-05-01T12:00:00Z)")


def parse_env(entries: list[str]) -> dict[str, str]:
    """``--env "K=V,K2=V2"`` (repeatable) into a dict; a later key wins."""
    env: dict[str, str] = {}
    for entry in entries:
        for pair in entry.split(","):
            if not pair.strip():
                continue
            key, sep, value = pair.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValidationError(f"--env entry '{pair}' is not KEY=VALUE")
            if not _ENV_KEY.match(key):
                raise ValidationError(f"--env key '{key}' is not a valid variable name")
            env[key] = value
    return env


def parse_args(raw: str | None) -> list[str]:
    """``--args "-c 'echo a && echo b'"`` into shell words."""
    if not raw:
        return []
    try:
        return shlex.split(raw)
    except ValueError as e:
        raise ValidationError(f"--args is not valid shell words: {e}") from e


def check_timeout(seconds: float | None) -> float | None:
    if seconds is None:
        return None
    if not seconds > 0:
        raise ValidationError("--timeout must be a positive number of seconds")
    if seconds > MAX_TIMEOUT_S:
        raise ValidationError(f"--timeout must be at most {MAX_TIMEOUT_S:g} seconds (7 days)")
    return seconds


def check_command(command: str) -> str:
    if not command.strip():
        raise ValidationError("--command must not be empty")
    return command


def parse_job_id(value: str | None, option: str | None = None) -> uuid.UUID:
    """A job id from the positional argument or ``--id``; exactly one must be given."""
    if value and option and value != option:
        raise ValidationError("give the job id once: as an argument or with --id")
    raw = value or option
    if not raw:
        raise ValidationError("a job id is required (hodei job get ID)")
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ValidationError(f"'{raw}' is not a valid job id (expected a UUID)") from None


def parse_state(states: type[E], value: str | None) -> E | None:
    """``--state`` of a job or worker (or ``--mode``), any case; None when not given."""
    if value is None:
        return None
    for state in states:
        if state.value.lower() == value.lower():
            return state
    known = ", ".join(s.value for s in states)
    kind = "mode" if all(s.value.islower() for s in states) else "state"
    raise ValidationError(f"unknown {kind} '{value}' (one of {known})")


def parse_cpus(raw: str | None, option: str = "--cpus") -> float | None:
    """``--cpus 0.5``: how many CPUs a job may use; None when not given."""
    if raw is None:
        return None
    try:
        cpus = float(raw)
    except ValueError:
        cpus = float("nan")
    if not MIN_CPUS <= cpus <= MAX_CPUS:  # also refuses nan and inf
        raise ValidationError(
            f"{option} must be a number of CPUs from {MIN_CPUS:g} to {MAX_CPUS:g}")
    return cpus


def parse_memory(raw: str | None, option: str = "--memory") -> int | None:
    """``--memory 512m`` (k, m, g, t: powers of 1024; plain digits: bytes); None when not given."""
    if raw is None:
        return None
    match = _SIZE.fullmatch(raw.strip())
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()]) if match else 0
    if not MIN_MEMORY_BYTES <= size <= MAX_MEMORY_BYTES:
        raise ValidationError(
            f"{option} must be a size from {MIN_MEMORY_BYTES // 2**20}m to "
            f"{MAX_MEMORY_BYTES // 2**40}t, like 512m or 2g")
    return size
def parse_since(value: str | None, now: float | None = None) -> Since | None:
    """``--since``: after a line number, within a duration, or from a timestamp."""
    if value is None:
        return None
    text = value.strip()
    if match := _LINE.match(text):
        attempt = int(match.group(1)) if match.group(1) else None
        if attempt == 0:
            raise ValidationError("--since ATTEMPT:LINE: attempts are numbered from 1")
        return Since(seq=int(match.group(2)), attempt=attempt)
    if _DURATION.match(text):
        seconds = sum(float(n) * _UNIT_S[unit] for n, unit in _DURATION_PART.findall(text))
        return Since(ts=(time.time() if now is None else now) - seconds)
    try:
        when = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValidationError(f"--since '{value}' is not {SINCE_HELP}") from None
    return Since(ts=when.timestamp())  # a time without zone is local time


def check_tail(lines: int | None) -> int | None:
    if lines is not None and lines < 0:
        raise ValidationError("--tail must be a number of lines, 0 or more")
    return lines


def parse_stream(value: str | None) -> LogStream | None:
    """``--stream stdout|stderr``; None shows both."""
    if value is None:
        return None
    streams = {"stdout": LogStream.STDOUT, "stderr": LogStream.STDERR}
    try:
        return streams[value.lower()]
    except KeyError:
        raise ValidationError(f"--stream must be stdout or stderr, not '{value}'") from None
