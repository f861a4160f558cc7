"""
Where the daemon spends the time between P2 and P3: one knock on the lab with ``strace -f -tt``
attached to the daemon (syscalls on the control socket, process spawns, waits). Root only; the
lab is torn down in ``finally``. ``.venv/bin/python bench/trace_grant.py``
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.lab import Lab  # noqa: E402

lab = Lab()
try:
    lab.build()
    lab.start_echo_service()
    lab.start_daemon({"FIREWALL": "nftables", "FIREWALL_POLICY": "lockdown"})
    lab.knock()  # warm up
    out = os.path.join(lab.directory, "strace.txt")
    tracer = subprocess.Popen(["strace", "-f", "-tt", "-T", "-o", out, "-e",
                               "trace=recvfrom,recvmsg,sendto,sendmsg,clone,clone3,execve,wait4,"
                               "bind,listen,pipe2", "-p", str(lab.daemon.pid)])
    time.sleep(1.0)
    result = lab.knock(extra=["-v"])
    time.sleep(0.3)
    tracer.terminate()
    tracer.wait(timeout=10)
    print(result.stderr)
    with open(out) as trace:
        for line in trace:
            if "resumed" in line and "recvfrom" not in line:
                pass
            if any(word in line for word in ("recvfrom(", "sendto(", "sendmsg(", "clone",
                                             "execve(", "wait4(", "bind(", "listen(")):
                if "EAGAIN" in line:
                    continue
                print(line.rstrip()[:200])
finally:
    lab.close()
