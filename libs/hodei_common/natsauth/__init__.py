"""NATS decentralized auth (operator, accounts, users with nkeys and JWTs; NATS ADR-14).

Not switched on anywhere yet: this builds what a server in operator mode and its users need.
"""
