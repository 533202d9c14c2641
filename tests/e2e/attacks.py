"""A hostile job's attempts on its own agent, run in a container or a pod.

The script prints one line per attempt that was refused, and an upper-case line for any that
worked, so that a test compares the whole output with :data:`ALL_REFUSED`. It tries every
process not of its own uid: the agent is the container's first process and the job's parent.
"""

from __future__ import annotations

JOB_UID = 10001

ON_THE_AGENT = r"""
id -u; id -G
echo "agent is $(cat /proc/$PPID/comm), pid $PPID"
cat /proc/1/environ >/dev/null 2>&1 && echo READ-PID1-ENVIRON
n=0
for p in /proc/[0-9]*; do
  [ "$(stat -c %u "$p" 2>/dev/null)" = "$(id -u)" ] && continue
  [ -e "$p/environ" ] || continue
  n=$((n + 1))
  cat "$p/environ" >/dev/null 2>&1 && echo "READ $p/environ"
  ls "$p/fd" >/dev/null 2>&1 && echo "LISTED $p/fd"
  (: < "$p/mem") 2>/dev/null && echo "OPENED $p/mem"
  kill -TERM "${p#/proc/}" 2>/dev/null && echo "SIGNALLED ${p#/proc/}"
done
echo "tried $n other processes"
env | grep '^HODEI_' || echo no HODEI variable
ls /root >/dev/null 2>&1 && echo LISTED-ROOT-HOME
touch here "$HOME/there" && echo can write its directory and home
"""

ALL_REFUSED = (f"{JOB_UID}\n{JOB_UID}\nagent is python, pid 1\ntried 1 other processes\n"
               "no HODEI variable\ncan write its directory and home\n")
