"""The ``hodei`` command line."""
