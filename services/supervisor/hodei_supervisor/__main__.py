from hodei_common.runner import main_for
from hodei_supervisor.config import SupervisorSettings
from hodei_supervisor.service import SupervisorService


def main() -> None:
    main_for(SupervisorSettings, lambda settings: [SupervisorService(settings)])


if __name__ == "__main__":
    main()
