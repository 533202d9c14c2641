"""Test helpers shared by Hodei's tests (the fixtures live in :mod:`.plugin`)."""

from hodei_common.testing.eventually import assert_eventually

__all__ = ["assert_eventually"]
