"""``python -m hodei_api``: run the API service until SIGINT/SIGTERM."""

from __future__ import annotations

from hodei_api.config import ApiSettings
from hodei_api.service import ApiService
from hodei_common.runner import main_for


def main() -> None:
    """Build the settings from the environment and run one API service."""
    main_for(ApiSettings, lambda s: [ApiService(s)])


if __name__ == "__main__":
    main()
