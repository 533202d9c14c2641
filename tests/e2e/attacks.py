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

ALL_REFUSED = (f"{JOB_UID}\n{JOB_UID}\nagent is hodei-agent, pid 1\ntried 1 other processes\n"
               "no HODEI variable\ncan write its directory and home\n")

# A job's code looking for the platform's secrets everywhere it can read, then trying the
# platform's NATS and PostgreSQL (their addresses given, as an attacker on the host network
# would find them) with whatever it found and without. It prints one JSON report.
ON_THE_PLATFORM = r'''
import asyncio, json, os, re, sys
SECRET = re.compile(r"HODEI_BOOTSTRAP|BEGIN NATS USER JWT|\bSU[A-Z2-7]{56}\b|\bSA[A-Z2-7]{56}\b"
                    r"|\bSO[A-Z2-7]{56}\b|postgres(ql)?://[^\s:@/]+:[^\s@/]+@")
found = []
def look(path):
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return
    if SECRET.search(text):
        found.append(path)
for name, value in os.environ.items():
    if SECRET.search(f"{name}={value}"):
        found.append(f"env:{name}")
for pid in os.listdir("/proc"):
    if pid.isdigit():
        look(f"/proc/{pid}/environ")
        try:  # the job's own command lines hold this very script
            theirs = os.stat(f"/proc/{pid}").st_uid != os.getuid()
        except OSError:
            continue
        if theirs:
            look(f"/proc/{pid}/cmdline")
for root in ("/home", "/tmp", "/run", "/root", "/etc", "/var"):
    for top, dirs, files in os.walk(root):
        for file in files:
            look(os.path.join(top, file))
report = {"found": found}
async def nats_attempt():
    import nats
    try:
        nc = await nats.connect(os.environ["TARGET_NATS"], allow_reconnect=False,
                                max_reconnect_attempts=0, connect_timeout=3)
    except Exception as e:
        return f"refused: {e}"
    reply = await nc.request("hodei.api.default.jobs.list", b"{}", timeout=2)
    await nc.close()
    return f"ANSWERED: {reply.data[:80]!r}"
async def pg_attempt(user, password):
    import asyncpg
    try:
        conn = await asyncpg.connect(host="127.0.0.1", port=int(os.environ["TARGET_PG_PORT"]),
                                     user=user, password=password, database="hodei",
                                     timeout=3)
    except Exception as e:
        return f"refused: {type(e).__name__}"
    rows = await conn.fetchval("SELECT count(*) FROM jobs")
    await conn.close()
    return f"CONNECTED: {rows} jobs"
async def main():
    report["nats"] = await nats_attempt()
    report["postgres"] = {f"{u}/{p or '-'}": await pg_attempt(u, p)
                          for u in ("hodei", "postgres", "root") for p in (None, "hodei", "")}
asyncio.run(main())
print(json.dumps(report, sort_keys=True))
'''
