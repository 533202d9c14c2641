"""Real nats-server and PostgreSQL processes for the embedded platform and the test harness."""

from hodei_common.embedded.nats_server import NatsServer
from hodei_common.embedded.postgres import PostgresServer

__all__ = ["NatsServer", "PostgresServer"]
