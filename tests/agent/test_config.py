"""The agent's settings: read from ``HODEI_*`` without pydantic, each bad value one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import pytest

from hodei_agent.config import AgentSettings
from hodei_common.errors import ConfigError

WORKER = str(uuid4())
BASE = {"HODEI_NATS_URL": "nats://127.0.0.1:4222", "HODEI_WORKER_ID": WORKER,
        "HODEI_BOOTSTRAP_TOKEN": "the-token"}


def test_settings_come_from_the_environment_converted_with_defaults() -> None:
    settings = AgentSettings.from_env({
        **BASE, "HODEI_KILL_GRACE_S": "0.5", "HODEI_PUBLISH_ATTEMPTS": "3",
        "HODEI_WORKER_WORKDIR": "/srv/work", "HODEI_AGENT_ON_SIGTERM": "abandon",
        "HODEI_BOOTSTRAP_CREDS": "creds text", "OTHER": "ignored", "HODEI_UNKNOWN": "ignored",
    })
    assert str(settings.worker_id) == WORKER
    assert settings.resolved_nats_url() == "nats://127.0.0.1:4222"
    assert settings.kill_grace_s == 0.5
    assert settings.publish_attempts == 3
    assert settings.worker_workdir == Path("/srv/work")
    assert settings.agent_on_sigterm == "abandon"
    assert settings.bootstrap_token.get_secret_value() == "the-token"
    assert settings.bootstrap_creds is not None
    assert settings.bootstrap_creds.get_secret_value() == "creds text"
    assert settings.log_batch_lines == 500  # a default
    assert settings.resolved_creds("agent") is None
    assert settings.nats_user is None
    assert settings.nats_password is None
    # Overrides (by field name) win over the environment.
    assert AgentSettings.from_env(BASE, kill_grace_s=7).kill_grace_s == 7


def test_secrets_never_show_in_the_settings_repr() -> None:
    shown = repr(AgentSettings.from_env({**BASE, "HODEI_BOOTSTRAP_CREDS": "creds text"}))
    assert "the-token" not in shown
    assert "creds text" not in shown
    assert "Secret('**********')" in shown


@pytest.mark.parametrize(("env", "line"), [
    ({"HODEI_WORKER_ID": None}, "HODEI_WORKER_ID: not set"),
    ({"HODEI_NATS_URL": None}, "HODEI_NATS_URL: not set"),
    ({"HODEI_WORKER_ID": "nope"}, "HODEI_WORKER_ID: invalid UUID"),
    ({"HODEI_KILL_GRACE_S": "-1"}, "HODEI_KILL_GRACE_S: expected `float` >= 0.0"),
    ({"HODEI_PUBLISH_ATTEMPTS": "many"}, "HODEI_PUBLISH_ATTEMPTS: expected `int`, got `str`"),
    ({"HODEI_AGENT_ON_SIGTERM": "ignore"},
     "HODEI_AGENT_ON_SIGTERM: invalid enum value 'ignore'"),
])
def test_a_bad_or_missing_value_is_one_line_naming_its_variable(
    env: dict[str, str | None], line: str,
) -> None:
    given = {k: v for k, v in {**BASE, **env}.items() if v is not None}
    with pytest.raises(ConfigError) as raised:
        AgentSettings.from_env(given)
    assert str(raised.value) == line


def test_the_agent_starts_without_importing_pydantic() -> None:
    # What its start costs: pydantic and a settings model took ~0.1 s of CPU per worker.
    code = ("import sys; import hodei_agent.entry, hodei_agent.template; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pydantic', 'pydantic_settings', 'pydantic_core')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
