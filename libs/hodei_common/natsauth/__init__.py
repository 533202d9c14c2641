"""NATS decentralized auth (operator, accounts, users with nkeys and JWTs; NATS ADR-14):
what a server in operator mode trusts, the users it then lets in, and what each may do.
"""

from hodei_common.natsauth.keys import KeyKind, NKey, NKeyError, write_secret
from hodei_common.natsauth.permissions import Permissions, Role
from hodei_common.natsauth.server import Trust, UserCredentials

__all__ = ["KeyKind", "NKey", "NKeyError", "Permissions", "Role", "Trust", "UserCredentials",
           "write_secret"]
