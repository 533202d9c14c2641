"""``python -m hodei_provisioner``: run the provisioner service until SIGINT/SIGTERM."""

from __future__ import annotations

from hodei_common.runner import main_for
from hodei_provisioner.config import ProvisionerSettings
from hodei_provisioner.service import ProvisionerService


def main() -> None:
    """Build the settings from the environment and run one provisioner service."""
    main_for(ProvisionerSettings, lambda s: [ProvisionerService(s)])


if __name__ == "__main__":
    main()
