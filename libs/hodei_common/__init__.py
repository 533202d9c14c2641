"""Shared foundation of the Hodei services: contracts, settings, connections, outbox, runner."""
