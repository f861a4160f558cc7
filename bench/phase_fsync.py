"""
The replay cache's durable writes under a burst: ``MANY`` clients log in at once, each from its
own address (as in phase ``sig2knock``), ``BURSTS`` times, on the lab's disk and again with every
fsync of the daemon made ``DELAY_MS`` slower by ``fsync_delay.c`` (an LD_PRELOAD shim, compiled
here with ``cc``; it sleeps before the real call, as slow storage would make the caller wait).

Per burst: logins that got access, their median and last time to access, and the accepted
control messages per second (the daemon's ``P1 accepted`` and ``P3 sent`` lines, over the time
from the burst's start to its last access).
"""

import os
import subprocess
import time

from driver import BENCH, CHEAP_KDF, MANY, log
from phase_sig2knock import SERVER, burst

BURSTS = 3
DELAY_MS = 10  # an SD card or a busy network disk; local SSDs take well under 1 ms
SHIM_BANNER = "fsync-delay:"


def build_shim(directory):
    """The shim, compiled into ``directory``; its path."""
    path = os.path.join(directory, "fsync_delay.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", path,
                    os.path.join(BENCH, "fsync_delay.c"), "-ldl"], check=True)
    return path


def accepted_messages(text):
    """The control messages the daemon accepted in the log ``text``: P1s, and P2s answered."""
    return sum(1 for line in text.splitlines() if "P1 accepted: " in line or "P3 sent: " in line)


def fsync(bench):
    lab = bench.lab
    shim = build_shim(lab.directory)
    users = [f"u{i:03d}" for i in range(MANY)]
    figures = bench.results["fsync"] = {}
    for delay_ms in (0, DELAY_MS):
        lab.extra_users = [(user, CHEAP_KDF) for user in users]
        prefix = ["env", f"LD_PRELOAD={shim}", f"FSYNC_DELAY_MS={delay_ms}"] if delay_ms else []
        lab.start_daemon({"FIREWALL": "nftables", "FIREWALL_POLICY": "lockdown"}, prefix=prefix)
        SERVER["key"] = lab.server_key
        bursts = figures[str(delay_ms)] = []
        try:
            if delay_ms and SHIM_BANNER not in lab.log()[lab.daemon_log_start:]:
                time.sleep(0.5)  # the banner comes with the first fsync, at start
                if SHIM_BANNER not in lab.log()[lab.daemon_log_start:]:
                    raise RuntimeError("the fsync-delay shim did not act on the daemon")
            for _ in range(BURSTS):
                time.sleep(1)
                since = len(lab.log())
                summary = burst(bench, lab.daemon.pid, users)
                accepted = accepted_messages(lab.log()[since:])
                summary["accepted"] = accepted
                summary["per_second"] = (accepted / (summary["last_ms"] / 1000)
                                         if summary["last_ms"] else None)
                bursts.append(summary)
                if summary["ok"] < MANY:
                    bench.failures.append(f"fsync {delay_ms} ms: only {summary['ok']}/{MANY} "
                                          "got access")
                log(f"fsync {delay_ms} ms: {summary['ok']}/{MANY}, last {summary['last_ms']} "
                    f"ms, {accepted} messages")
        finally:
            if lab.daemon.poll() is None:
                lab.stop_daemon()
            lab.daemon_command("--flush")
