"""Settings from the environment (``HODEI_*``), built once in ``__main__`` and passed down.

With no ``HODEI_NATS_URL``/``HODEI_DATABASE_URL`` set, the endpoints of the embedded platform
are read from ``$HODEI_HOME/dev.json``, which ``hodei dev up`` writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hodei_common.contracts.agent import DEFAULT_HEARTBEAT_INTERVAL_S
from hodei_common.contracts.logs import LOGS_MAX_AGE_S
from hodei_common.errors import ConfigError

DEV_FILE = "dev.json"
DEFAULT_BACKOFF_BASE_S = 0.5
DEFAULT_BACKOFF_MAX_S = 30.0
S = TypeVar("S", bound=BaseSettings)


def default_home() -> Path:
    return Path.home() / ".hodei"


class Settings(BaseSettings):
    """What every Hodei process needs: where NATS and PostgreSQL are, and how to stop."""

    model_config = SettingsConfigDict(env_prefix="HODEI_", frozen=True, extra="ignore")

    home: Path = Field(default_factory=default_home)
    nats_url: str | None = None
    # May carry a password: kept out of the settings' repr, shown through urls.redact_url().
    database_url: str | None = Field(default=None, repr=False)
    nats_user: str | None = None
    nats_password: str | None = Field(default=None, repr=False)
    # NATS credentials (a creds file: the user's JWT and nkey seed). ``creds`` is this
    # process's (HODEI_CREDS); else ``creds_dir`` holds one per identity (``<name>.creds``:
    # the embedded platform's services each connect as their own user); else, with no NATS
    # URL set, the embedded platform's dev file names that directory.
    creds: Path | None = None
    creds_dir: Path | None = None
    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(default=10, ge=1)
    drain_grace_s: float = Field(default=10.0, gt=0)
    request_timeout_s: float = Field(default=5.0, gt=0)
    log_level: str = "INFO"
    # Where /metrics, /healthz and /readyz are served (host:port; port 0: a free one).
    # None: nowhere, for a service of its own; `hodei dev up` picks a free local port.
    metrics_addr: str | None = None
    # A requeued job waits base * 2^(n-1) s after its n-th lost attempt, at most max.
    requeue_backoff_s: float = Field(default=DEFAULT_BACKOFF_BASE_S, ge=0)
    requeue_backoff_max_s: float = Field(default=DEFAULT_BACKOFF_MAX_S, ge=0)
    # Platform settings (hodei_common.platform_settings): services agree on these by using the
    # values stored in PostgreSQL, which `hodei migrate` records from its environment; a
    # service whose own environment sets another value warns once and uses the stored one.
    # How often agents beat (the provisioner tells them; the supervisor judges silence by it).
    heartbeat_interval_s: float = Field(default=DEFAULT_HEARTBEAT_INTERVAL_S, gt=0)
    # How long the LOGS stream keeps log lines. Finished jobs' logs stay readable from their
    # archive.
    logs_max_age_s: float = Field(default=LOGS_MAX_AGE_S, ge=1)
    # The byte cap of one job's log (0: none), which every assignment carries to its agent.
    log_max_bytes: int = Field(default=1 << 30, ge=0)

    @field_validator("home", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    def dev_file(self) -> Path:
        return self.home / DEV_FILE

    def resolved_nats_url(self) -> str:
        """The NATS URL from the environment, else the embedded platform's."""
        if self.nats_url:
            return self.nats_url
        return str(self._dev_endpoint("nats_url"))

    def resolved_database_url(self) -> str:
        """The PostgreSQL URL from the environment, else the embedded platform's."""
        if self.database_url:
            return self.database_url
        return str(self._dev_endpoint("database_url"))

    def resolved_creds(self, identity: str) -> Path | None:
        """The creds file to connect as ``identity`` with; None: connect without any (a
        NATS that asks for no credentials)."""
        if self.creds is not None:
            return self.creds.expanduser()
        directory = self.creds_dir
        if directory is None and not self.nats_url and self.dev_file().exists():
            named = self._dev_endpoint("creds_dir")
            directory = Path(named) if named else None
        if directory is None:
            return None
        path = directory.expanduser() / f"{identity}.creds"
        if not path.is_file():
            raise ConfigError(f"no NATS credentials for {identity}: {path} does not exist "
                              f"(set HODEI_CREDS to a creds file)")
        return path

    def _dev_endpoint(self, key: str) -> Any:
        path = self.dev_file()
        try:
            data = json.loads(path.read_text())
            return data[key]
        except FileNotFoundError:
            raise ConfigError(
                f"no Hodei platform found: set HODEI_NATS_URL/HODEI_DATABASE_URL or start one "
                f"with `hodei dev up` ({path} does not exist)"
            ) from None
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path} is not a valid dev file: {e}") from e


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build a settings object, turning a validation failure into one ConfigError line."""
    try:
        return cls(**overrides)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"HODEI_{field.upper()}: {first['msg']}") from e
