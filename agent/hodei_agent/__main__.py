"""``python -m hodei_agent`` / ``hodei-agent``: run the worker agent until it is done.

Exit codes: 0 done (or stopped), 3 registration refused, 1 any other fatal error
(among them a lost platform, or a stop whose job's end could not be reported).
"""

import sys

# The agent never speaks NATS over websockets, yet nats-py imports aiohttp for them when it
# is installed: about 0.1 s of every worker's cold start. Only the agent's process opts out.
sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]

from hodei_agent.entry import main  # noqa: E402

if __name__ == "__main__":
    main()
