"""The charts' dependencies (hodei-common, and the charts the umbrella holds), built once."""

from __future__ import annotations

import pytest

from tests.deploy.charts import build_dependencies


@pytest.fixture(scope="session", autouse=True)
def chart_dependencies() -> None:
    build_dependencies()
