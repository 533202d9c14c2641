"""The agent process: settings, signals, exit codes (``python -m hodei_agent``).

Exit codes: 0 done (or stopped), 3 registration refused, 143 its job abandoned on SIGTERM
(``HODEI_AGENT_ON_SIGTERM=abandon``), 1 any other fatal error (among them a lost platform,
or a stop whose job's end could not be reported).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from hodei_agent.agent import Agent
from hodei_agent.config import AgentSettings
from hodei_agent.jobuser import check_can_switch, forbid_dumping
from hodei_agent.registration import RegistrationRefused, forget_secrets
from hodei_common import eventloop, heap, tracing
from hodei_common.errors import HodeiError
from hodei_common.logconfig import configure_logging

EXIT_FATAL = 1
EXIT_REFUSED = 3
EXIT_ABANDONED = 128 + signal.SIGTERM
# What ``ps``, ``pgrep`` and /proc/<pid>/comm call an agent, spawned or forked from the
# template (whose command line both may share).
PROCESS_NAME = "hodei-agent"


async def _run(settings: AgentSettings) -> None:
    agent = Agent(settings)
    loop = asyncio.get_running_loop()
    # Like a STOP order: the running job is cancelled and reported, then the agent exits;
    # or, for SIGTERM when so configured, ended unreported (the platform runs it again).
    loop.add_signal_handler(signal.SIGINT, agent.request_stop, "received SIGINT")
    if settings.agent_on_sigterm == "abandon":
        loop.add_signal_handler(signal.SIGTERM, agent.abandon, "received SIGTERM")
    else:
        loop.add_signal_handler(signal.SIGTERM, agent.request_stop, "received SIGTERM")
    try:
        await agent.run()
        if agent.abandoned:
            raise SystemExit(EXIT_ABANDONED)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        # The agent is ending: a SIGTERM now (its provider destroying the worker of a job
        # that just ended) would only cut short the export of its last spans. A flush that
        # hangs is its provider's to end with SIGKILL after the grace.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _guard(settings: AgentSettings) -> None:
    """Keep the agent's powers from its jobs before any runs: the one-time token and the
    bootstrap credentials leave the environment (the settings hold them), and with a job
    user the agent checks it can switch to it and stops being dumpable."""
    forget_secrets()
    user = settings.job_user()
    if user is not None:
        check_can_switch(user)
        forbid_dumping()


def name_process() -> None:
    """Call this process ``hodei-agent`` (its comm; the command line stays)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(PROCESS_NAME)


def main() -> None:
    """Build the settings from the environment and run the agent."""
    name_process()
    try:
        settings = AgentSettings.from_env()
        configure_logging(settings.log_level, service="hodei-agent")
        _guard(settings)
        heap.settle()
        eventloop.run(_run(settings))
    except RegistrationRefused as e:
        print(f"error: registration refused: {e}", file=sys.stderr)
        raise SystemExit(EXIT_REFUSED) from None
    except HodeiError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_FATAL) from None
    finally:
        tracing.shutdown_tracing()
