from hodei_common.runner import main_for
from hodei_common.settings import Settings
from hodei_logs.service import LogsService


def main() -> None:
    main_for(Settings, lambda settings: [LogsService(settings)])


if __name__ == "__main__":
    main()
