"""The error hierarchy. Foreign errors are translated at the boundary with ``raise ... from``."""

from __future__ import annotations


class HodeiError(Exception):
    """Root of every error Hodei raises on purpose."""


class ConfigError(HodeiError):
    """The environment or a config file is wrong; the message says how to fix it."""


class SchemaError(HodeiError):
    """The database schema does not match what this build needs."""


class MigrationError(HodeiError):
    """A migration cannot be applied (checksum drift, failed SQL, unknown version)."""


class ValidationError(HodeiError):
    """A request is malformed; the message is one line for the user."""


class NotFoundError(HodeiError):
    """The thing asked for does not exist."""


class PermissionDeniedError(HodeiError):
    """The caller may not do this (a bad token, another worker's subject)."""


class PreconditionError(HodeiError):
    """The request is valid but the thing is not in a state that allows it."""


class HandlerError(HodeiError):
    """Raised by a message handler to steer redelivery."""


class RetryLater(HandlerError):
    """Nak the message so it comes back after ``delay`` seconds."""

    def __init__(self, delay: float, reason: str = "") -> None:
        super().__init__(reason or f"retry in {delay:g}s")
        self.delay = delay


class PermanentError(HandlerError):
    """The message can never be handled: terminate it instead of redelivering."""


class ApiError(HodeiError):
    """An error reply from the API, as the CLI and other callers see it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UnavailableError(HodeiError):
    """The platform cannot be reached."""
