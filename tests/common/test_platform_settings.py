"""Platform settings: stored once, recorded by `hodei migrate`, used by every service."""

from __future__ import annotations

import dataclasses
import logging

import asyncpg
import pytest
from nats.js import JetStreamContext

from hodei_common import platform_settings
from hodei_common.contracts import subjects
from hodei_common.errors import ConfigError
from hodei_common.platform_settings import Change, PlatformSettings
from hodei_common.settings import Settings, load_settings
from hodei_common.testing.services import running
from hodei_logs.config import LogsSettings
from hodei_logs.service import LogsService

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

DEFAULTS = PlatformSettings(**{name: Settings.model_fields[name].default
                               for name in platform_settings.NAMES})


def unset(settings: Settings) -> dict[str, object]:
    """``settings`` as keyword arguments, without the platform settings."""
    return settings.model_dump(exclude=set(platform_settings.NAMES))


async def stored(pool: asyncpg.Pool) -> PlatformSettings:
    async with pool.acquire() as conn:
        return await platform_settings.load(conn)


async def test_a_migrated_platform_has_the_defaults_every_service_has(pool: asyncpg.Pool) -> None:
    assert PlatformSettings(heartbeat_interval_s=1.0, logs_max_age_s=7 * 86400.0,
                            log_max_bytes=float(1 << 30)) == DEFAULTS
    assert await stored(pool) == DEFAULTS


async def test_migrate_records_only_what_its_environment_sets(
    pool: asyncpg.Pool, settings: Settings,
) -> None:
    async with pool.acquire() as conn:
        assert await platform_settings.record(conn, settings) == []
        set_one = Settings(**unset(settings), logs_max_age_s=3600)
        assert await platform_settings.record(conn, set_one) == [
            Change("logs_max_age_s", 3600.0, 7 * 86400.0)]
        assert await platform_settings.record(conn, set_one) == []
        # A later run whose environment does not set it leaves it as recorded.
        assert await platform_settings.record(conn, Settings(**unset(settings))) == []
    assert await stored(pool) == dataclasses.replace(DEFAULTS, logs_max_age_s=3600)


async def test_a_service_started_with_another_logs_max_age_leaves_the_stream_alone(
    pool: asyncpg.Pool, js: JetStreamContext, settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    service = LogsService(LogsSettings(**unset(settings), logs_max_age_s=3600))
    async with running([service]):
        assert service.platform == DEFAULTS
    info = await js.stream_info(subjects.LOGS_STREAM)
    assert info.config.max_age == DEFAULTS.logs_max_age_s
    said = [r.getMessage() for r in caplog.records if "HODEI_LOGS_MAX_AGE_S" in r.getMessage()]
    assert said == ["logs: HODEI_LOGS_MAX_AGE_S=3600 (the platform's is 604800): not used; "
                    "every service uses the platform's value, which `hodei migrate` records "
                    "from its environment"]

    # Recorded as the platform's (`hodei migrate`), it reaches the stream at the next start,
    # with no word from a service that does not set it.
    caplog.clear()
    async with pool.acquire() as conn:
        await platform_settings.record(conn, Settings(**unset(settings), logs_max_age_s=3600))
    async with running([LogsService(LogsSettings(**unset(settings)))]):
        pass
    assert (await js.stream_info(subjects.LOGS_STREAM)).config.max_age == 3600
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_garbled_stored_setting_is_one_clear_line(pool: asyncpg.Pool) -> None:
    await pool.execute("UPDATE platform_settings SET value = '\"soon\"' "
                       "WHERE name = 'heartbeat_interval_s'")
    with pytest.raises(ConfigError, match="HODEI_HEARTBEAT_INTERVAL_S"):
        await stored(pool)


async def test_a_log_cap_of_zero_means_none_and_a_negative_one_is_one_clear_line(
    pool: asyncpg.Pool, settings: Settings,
) -> None:
    async with pool.acquire() as conn:
        await platform_settings.record(conn, Settings(**unset(settings), log_max_bytes=0))
    platform = await stored(pool)
    assert (platform.log_max_bytes, platform.log_cap) == (0, None)
    assert DEFAULTS.log_cap == 1 << 30
    await pool.execute("UPDATE platform_settings SET value = '-1' WHERE name = 'log_max_bytes'")
    with pytest.raises(ConfigError, match="not a number of 0 or more: set HODEI_LOG_MAX_BYTES"):
        await stored(pool)


async def test_hodei_migrate_records_the_values_its_environment_sets(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hodei_cli.admin import run_migrations

    monkeypatch.setenv("HODEI_DATABASE_URL", empty_database_url)
    monkeypatch.setenv("HODEI_HEARTBEAT_INTERVAL_S", "0.5")
    done, version, changed = await run_migrations(load_settings(Settings))
    assert done
    assert version is not None
    assert [platform_settings.describe(c) for c in changed] == [
        "HODEI_HEARTBEAT_INTERVAL_S = 0.5 (was 1)"]
    monkeypatch.delenv("HODEI_HEARTBEAT_INTERVAL_S")
    assert await run_migrations(load_settings(Settings)) == ([], version, [])
