from hodei_common.runner import main_for
from hodei_logs.config import LogsSettings
from hodei_logs.service import LogsService


def main() -> None:
    main_for(LogsSettings, lambda settings: [LogsService(settings)])


if __name__ == "__main__":
    main()
