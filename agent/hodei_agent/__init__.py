"""The worker agent: registers with its bootstrap token, heartbeats, runs jobs, streams logs."""

from hodei_agent.agent import Agent, RegistrationRefused
from hodei_agent.config import AgentSettings

__all__ = ["Agent", "AgentSettings", "RegistrationRefused"]
