"""
fwknop on the lab: SPA with AES + HMAC (keys from ``fwknop --key-gen``), fwknopd's default
configuration except its interface and run directory, ``OPEN_PORTS tcp/7777``. Time to access
with the fast probe and with a plain connect, and under attack.
"""

import contextlib
import os
import re
import subprocess
import time

from driver import CLIENT_IP, SERVER_IP, SERVICE_PORT, log, ms_list, proc_sample

FWKNOP_PORT = 62201


@contextlib.contextmanager
def fwknopd_running(bench, port=SERVICE_PORT):
    """
    fwknopd guarding ``port`` (iptables drops it on br0 until an SPA packet opens it); yields
    (the daemon, the ``fwknop`` command, its environment, a function that closes the port
    again, the daemon's log path).
    """
    lab = bench.lab
    home = os.path.join(lab.directory, "fwknop-home")
    run_dir = os.path.join(lab.directory, "fwknop-run")
    os.makedirs(home, exist_ok=True)
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    env = dict(os.environ, HOME=home)
    keys = subprocess.run(["fwknop", "--key-gen"], capture_output=True, text=True, env=env,
                          check=True).stdout
    key = re.search(r"^KEY_BASE64:\s*(\S+)", keys, re.M).group(1)
    hmac = re.search(r"^HMAC_KEY_BASE64:\s*(\S+)", keys, re.M).group(1)
    conf = os.path.join(lab.directory, "fwknopd.conf")
    access = os.path.join(lab.directory, "access.conf")
    daemon_log = os.path.join(lab.directory, "fwknopd.log")
    for path, text in (
        (conf, f"PCAP_INTFC br0;\nFWKNOP_RUN_DIR {run_dir};\n"),
        (access, f"SOURCE ANY\nOPEN_PORTS tcp/{port}\nKEY_BASE64 {key}\n"
                 f"HMAC_KEY_BASE64 {hmac}\n"),
    ):
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write(text)
    bench.base_iptables(port)
    with open(daemon_log, "w") as log_file:
        daemon = lab.start("server", ["fwknopd", "-f", "-c", conf, "-a", access, "-i", "br0",
                                      "-p", f"{run_dir}/fwknopd.pid",
                                      "-d", f"{run_dir}/digest.cache"],
                           stdout=log_file, stderr=subprocess.STDOUT)

    def reset():
        bench.srv("iptables", "-F", "FWKNOP_INPUT", check=False)

    try:
        time.sleep(1.5)
        if daemon.poll() is not None:
            with open(daemon_log) as log_file:
                raise RuntimeError("fwknopd did not start: " + log_file.read()[-500:])
        bench.closed_check("fwknop", port)
        client = ["fwknop", "-A", f"tcp/{port}", "-a", CLIENT_IP, "-D", SERVER_IP,
                  "--key-base64-rijndael", key, "--key-base64-hmac", hmac, "--no-save-args"]
        yield daemon, client, env, reset, daemon_log
    finally:
        if daemon.poll() is None:
            daemon.terminate()
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log("fwknopd did not end on SIGTERM; killed")
            daemon.kill()
            daemon.wait(timeout=10)
        bench.flush_iptables()


def fwknop(bench):
    with fwknopd_running(bench) as (daemon, client, env, reset, daemon_log):
        results = bench.results
        results["fwknop"] = bench.access_runs("fwknop", client, bench.runs, reset, env=env,
                                              port=SERVICE_PORT)
        results["fwknop_plain"] = bench.access_runs("fwknop-plain", client, bench.plain_runs,
                                                    reset, env=env, port=SERVICE_PORT,
                                                    probe="plain")
        records, cpu, rss, noise = bench.attack_window(
            daemon.pid, FWKNOP_PORT,
            lambda: bench.access_runs("fwknop-attack", client, bench.attack_runs, reset,
                                      env=env, capture=False, port=SERVICE_PORT))
        results["fwknop_attack"] = {"records": records, "cpu": cpu, "rss": rss, "noise": noise}
        results["fwknop_rss_idle"] = proc_sample(daemon.pid)[1] / 1024
        if not ms_list(records):
            with open(daemon_log) as log_file:
                tail = log_file.read()[-300:].replace("\n", " | ")
            bench.notes.append(f"fwknopd alive after the attack: {daemon.poll() is None}; "
                               f"its log: {tail}")
