"""
knockd on the lab: a static 3-port TCP sequence whose command inserts an iptables ACCEPT for the
knocking address (the base rule drops the guarded port on br0). Time to access with the fast
probe and with a plain connect, a duplicated knock, and the same under attack.
"""

import contextlib
import os
import time

from driver import CLIENT_IP, CONTROL_PORT, SERVER_IP, SERVICE_PORT, proc_sample

KNOCKD_SEQUENCE = (7001, 8002, 9003)


@contextlib.contextmanager
def knockd_running(bench, port=SERVICE_PORT):
    """
    knockd guarding ``port`` (iptables drops it on br0 until a knock opens it); yields
    (the daemon, the ``knock`` command, a function that closes the port again).
    """
    lab = bench.lab
    bench.base_iptables(port)
    rule = ["-s", f"{CLIENT_IP}/32", "-p", "tcp", "--dport", str(port), "-j", "ACCEPT"]
    command_rule = " ".join(rule).replace(CLIENT_IP, "%IP%")
    conf = os.path.join(lab.directory, f"knockd-{port}.conf")
    with open(conf, "w") as conf_file:
        conf_file.write(
            "[options]\n"
            f"  LogFile = {lab.directory}/knockd.log\n"
            f"  PidFile = {lab.directory}/knockd.pid\n"
            "  Interface = br0\n"
            "[open]\n"
            f"  sequence = {','.join(map(str, KNOCKD_SEQUENCE))}\n"
            "  seq_timeout = 5\n"
            "  tcpflags = syn\n"
            f"  command = /usr/sbin/iptables -I INPUT {command_rule}\n")
    daemon = lab.start("server", ["knockd", "-c", conf, "-i", "br0"])

    def reset():
        for _ in range(5):
            if bench.srv("iptables", "-D", "INPUT", *rule, check=False).returncode:
                break

    try:
        time.sleep(1.0)
        if daemon.poll() is not None:
            raise RuntimeError("knockd did not start")
        bench.closed_check("knockd", port)
        yield daemon, ["knock", SERVER_IP, *map(str, KNOCKD_SEQUENCE)], reset
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
        bench.flush_iptables()


def knockd(bench):
    with knockd_running(bench) as (daemon, knock, reset):
        results = bench.results
        results["knockd"] = bench.access_runs("knockd", knock, bench.runs, reset,
                                              port=SERVICE_PORT)
        results["knockd_plain"] = bench.access_runs("knockd-plain", knock, bench.plain_runs,
                                                    reset, port=SERVICE_PORT, probe="plain")
        # a duplicated knock port loses the sequence
        dup = ["knock", SERVER_IP, *map(str, (KNOCKD_SEQUENCE[0],) + KNOCKD_SEQUENCE)]
        results["knockd_dup"] = bench.access_runs("knockd-dup", dup, 5, reset, capture=False,
                                                  probe_timeout=1.0, port=SERVICE_PORT)
        bench.failures = [f for f in bench.failures if not f.startswith("knockd-dup")]
        records, cpu, rss, noise = bench.attack_window(
            daemon.pid, CONTROL_PORT,
            lambda: bench.access_runs("knockd-attack", knock, bench.attack_runs, reset,
                                      capture=False, port=SERVICE_PORT))
        results["knockd_attack"] = {"records": records, "cpu": cpu, "rss": rss, "noise": noise}
        results["knockd_rss_idle"] = proc_sample(daemon.pid)[1] / 1024
