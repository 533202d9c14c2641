"""Settings every service must agree on, stored once in PostgreSQL (``platform_settings``).

Agents beat at the interval the provisioner tells them in the register reply, and the
supervisor judges silence by it; every service declares the ``LOGS`` stream, so each would
set its max age; the api and the scheduler both write assignments, which carry the byte cap
of the job's log. Read from each service's own environment, they could differ, and then the
last service to start would win. Instead each is one row: migration 0007 stored the defaults,
``hodei migrate`` (and ``hodei dev up``) records the value its environment sets, and every
service reads the rows at start and uses them. A service whose own environment sets another
value says so in one warning line and uses the platform's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hodei_common.database import Conn
from hodei_common.errors import ConfigError
from hodei_common.settings import Settings


@dataclass(frozen=True, kw_only=True)
class PlatformSettings:
    """The platform's values; each field is also a field of :class:`Settings`."""

    heartbeat_interval_s: float
    logs_max_age_s: float
    log_max_bytes: float  # 0: no cap

    @property
    def log_cap(self) -> int | None:
        """The byte cap an assignment carries: None for none."""
        return int(self.log_max_bytes) or None


NAMES = tuple(f.name for f in dataclasses.fields(PlatformSettings))
ZERO_MEANS_NONE = frozenset({"log_max_bytes"})


@dataclass(frozen=True)
class Change:
    """A setting ``hodei migrate`` recorded: its new value, and the one before (None: new)."""

    name: str
    value: float
    was: float | None


LOAD = "SELECT name, value FROM platform_settings WHERE name = ANY($1::text[])"

# One statement for all: the CTEs share one snapshot, so ``before`` holds the old values.
RECORD = """
WITH wanted AS (SELECT * FROM unnest($1::text[], $2::jsonb[]) AS w(name, value)),
before AS (SELECT p.name, p.value FROM platform_settings p JOIN wanted USING (name)),
recorded AS (
    INSERT INTO platform_settings (name, value) SELECT name, value FROM wanted
    ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value
    WHERE platform_settings.value IS DISTINCT FROM EXCLUDED.value
    RETURNING name, value
)
SELECT recorded.name, recorded.value, before.value AS was
FROM recorded LEFT JOIN before USING (name) ORDER BY recorded.name
"""


def env_name(name: str) -> str:
    return f"HODEI_{name.upper()}"


async def load(conn: Conn) -> PlatformSettings:
    """The platform's settings; a missing or garbled row is one ConfigError line."""
    values = {row["name"]: row["value"] for row in await conn.fetch(LOAD, list(NAMES))}
    for name in NAMES:
        value = values.get(name)
        zero_ok = name in ZERO_MEANS_NONE
        if (isinstance(value, bool) or not isinstance(value, int | float) or value < 0
                or (value == 0 and not zero_ok)):
            kind = "a number of 0 or more" if zero_ok else "a positive number"
            raise ConfigError(f"platform setting {name} is {value!r} in PostgreSQL, not "
                              f"{kind}: set {env_name(name)} and run `hodei migrate`")
    return PlatformSettings(**{name: float(values[name]) for name in NAMES})


async def record(conn: Conn, settings: Settings) -> list[Change]:
    """Store the platform settings ``settings`` sets explicitly (from the environment);
    return those that changed. What the environment does not set stays as stored."""
    wanted = {name: getattr(settings, name) for name in NAMES
              if name in settings.model_fields_set}
    if not wanted:
        return []
    rows = await conn.fetch(RECORD, list(wanted), list(wanted.values()))
    return [Change(row["name"], float(row["value"]),
                   None if row["was"] is None else float(row["was"])) for row in rows]


def describe(change: Change) -> str:
    """``HODEI_NAME = value`` and, when it had one, the value before."""
    was = "" if change.was is None else f" (was {change.was:g})"
    return f"{env_name(change.name)} = {change.value:g}{was}"


def ignored(settings: Settings, platform: PlatformSettings) -> str | None:
    """One line naming the platform settings ``settings`` sets to other values than the
    platform's (and so are not used), or None when there are none."""
    differ: list[str] = []
    for name in NAMES:
        own: Any = getattr(settings, name)
        theirs = getattr(platform, name)
        if name in settings.model_fields_set and own != theirs:
            differ.append(f"{env_name(name)}={own:g} (the platform's is {theirs:g})")
    if not differ:
        return None
    return (f"{', '.join(differ)}: not used; every service uses the platform's value, "
            f"which `hodei migrate` records from its environment")
