"""The ``hodei-api`` NATS micro service: submit, get, list, cancel, events, workers, providers."""
