from hodei_common.runner import main_for
from hodei_scheduler.config import SchedulerSettings
from hodei_scheduler.service import SchedulerService


def main() -> None:
    main_for(SchedulerSettings, lambda settings: [SchedulerService(settings)])


if __name__ == "__main__":
    main()
