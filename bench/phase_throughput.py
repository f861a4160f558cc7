"""
Throughput of one TCP stream (``agent.py bulk``, 5 s, counted by ``sink.py``): direct (the
kernel path knockd and fwknop open), via socat, through sig2knock's proxy, and through
``FORWARD_MODE = nat`` with nftables and with iptables. The direct figure drifts between runs on
a shared machine (26-31 Gbit/s), so each nat measurement is paired with a direct one taken just
before it (direct, nat, direct, nat, ...) and the ratio is the median of the per-pair ratios.
iperf3 (direct and via socat) as a cross-check: it cannot go through sig2knock (it opens two
connections, a grant admits one).
"""

import json
import os
import subprocess
import time

from driver import BENCH, CHEAP_KDF, PASSWORD, PY, SERVER_IP, log, med
from phase_sig2knock import SERVER, pool, s2k_client

REPS = 3
SECONDS = 5
SINK_PORT = 5201  # 127.0.0.1: sig2knock's forward target
DIRECT_PORT = 5202  # 0.0.0.0: the direct path
SOCAT_PORT = 5203
IPERF_PORT = 5204
IPERF_SOCAT_PORT = 5205
NAT_FIREWALLS = ("nftables", "iptables")


def bulk(bench, port):
    answer = bench.agent({"op": "bulk", "host": SERVER_IP, "port": port, "seconds": SECONDS})
    if "gbps" not in answer:
        raise RuntimeError(f"bulk to port {port}: {answer.get('result')}")
    return answer["gbps"]


def knock_port(bench):
    """One knock (cheap KDF; the users of the pool in turn); the granted port."""
    users = bench.throughput_users
    bench.throughput_knocks = getattr(bench, "throughput_knocks", 0) + 1
    user = users[bench.throughput_knocks % len(users)]
    answer = bench.agent({"op": "run", "argv": s2k_client(user, CHEAP_KDF)[:-1],
                          "input": PASSWORD + "\n"})
    try:
        return int(answer["stdout"].split()[0])
    except (KeyError, IndexError, ValueError):
        raise RuntimeError(f"knock failed: {answer.get('stderr', answer.get('result'))[-300:]}")


def start_servers(bench):
    lab = bench.lab
    for host, port in (("127.0.0.1", SINK_PORT), ("0.0.0.0", DIRECT_PORT)):
        sink = lab.start("server", [PY, os.path.join(BENCH, "sink.py"), host, str(port), "100",
                                    "1800"], stdout=subprocess.PIPE, text=True)
        if sink.stdout.readline().strip() != "listening":
            raise RuntimeError(f"the sink on {host}:{port} did not start")
    lab.start("server", ["socat", f"TCP-LISTEN:{SOCAT_PORT},fork,reuseaddr",
                         f"TCP:127.0.0.1:{SINK_PORT}"], stderr=subprocess.DEVNULL)
    lab.start("server", ["iperf3", "-s", "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL)
    lab.start("server", ["socat", f"TCP-LISTEN:{IPERF_SOCAT_PORT},fork,reuseaddr",
                         f"TCP:127.0.0.1:{IPERF_PORT}"], stderr=subprocess.DEVNULL)
    time.sleep(0.5)


def iperf3(bench, name, port):
    values = []
    for _ in range(REPS):
        answer = bench.agent({"op": "run", "argv": ["iperf3", "-c", SERVER_IP, "-p", str(port),
                                                    "-t", str(SECONDS), "-J"]})
        try:
            values.append(json.loads(answer["stdout"])["end"]["sum_received"]
                          ["bits_per_second"] / 1e9)
        except (ValueError, KeyError):
            bench.failures.append(f"{name}: {answer.get('stderr', answer.get('result'))[-200:]}")
    return values


def nat_pairs(bench, firewall):
    """
    ``FORWARD_MODE = nat`` with ``firewall``, interleaved with direct: the per-pair figures, or
    ``{"skipped": why}`` when this checkout's configuration refuses it.
    """
    lab = bench.lab
    settings = {"FIREWALL": firewall, "FORWARD_TO_PORT": str(SINK_PORT), "FORWARD_MODE": "nat"}
    lab.write_server_files(settings, {"alice": PASSWORD})
    check = lab.daemon_command("--check-config")
    if check.returncode != 0:
        why = (check.stdout + check.stderr).strip()[-160:]
        bench.notes.append(f"FORWARD_MODE = nat with FIREWALL = {firewall} not accepted by this "
                           f"checkout ({why}); skipped")
        return {"skipped": why}
    pairs = {"direct": [], "nat": [], "ratios": []}
    lab.start_daemon(settings)
    SERVER["key"] = lab.server_key
    try:
        for _ in range(bench.pairs):
            direct = bulk(bench, DIRECT_PORT)
            try:
                nat = bulk(bench, knock_port(bench))
            except RuntimeError as error:
                bench.failures.append(f"throughput nat/{firewall}: {error}")
                continue
            pairs["direct"].append(direct)
            pairs["nat"].append(nat)
            pairs["ratios"].append(nat / direct if direct else 0.0)
    finally:
        lab.stop_daemon()
        lab.daemon_command("--flush")
    log(f"throughput nat/{firewall}: direct {pairs['direct']} nat {pairs['nat']} "
        f"pair ratio median {med(pairs['ratios'])}")
    return pairs


def throughput(bench):
    lab = bench.lab
    # at most 8 knocks per user and daemon (a user is capped at 16 live sessions, and in nat mode
    # the daemon never sees a grant's connection, so each counts for its whole open time)
    bench.throughput_users = pool("alice", max(REPS, bench.pairs))
    lab.extra_users = [(user, CHEAP_KDF) for user in bench.throughput_users[1:]]
    start_servers(bench)
    tp = bench.results["throughput"] = {}
    tp["direct"] = [bulk(bench, DIRECT_PORT) for _ in range(REPS)]
    tp["socat"] = [bulk(bench, SOCAT_PORT) for _ in range(REPS)]
    tp["iperf3_direct"] = iperf3(bench, "iperf3_direct", IPERF_PORT)
    tp["iperf3_socat"] = iperf3(bench, "iperf3_socat", IPERF_SOCAT_PORT)
    log(f"throughput direct/socat: {tp['direct']} {tp['socat']}")
    lab.start_daemon({"FIREWALL": "nftables", "FORWARD_TO_PORT": str(SINK_PORT)})
    SERVER["key"] = lab.server_key
    try:
        tp["s2k_proxy"] = [bulk(bench, knock_port(bench)) for _ in range(REPS)]
    finally:
        lab.stop_daemon()
        lab.daemon_command("--flush")
    log(f"throughput s2k proxy: {tp['s2k_proxy']}")
    for firewall in NAT_FIREWALLS:
        try:
            tp[f"nat_{firewall}"] = nat_pairs(bench, firewall)
        except Exception as error:  # one firewall's failure leaves the other's figures
            bench.failures.append(f"throughput nat/{firewall}: {type(error).__name__}: {error}")
            tp[f"nat_{firewall}"] = {"failed": f"{type(error).__name__}: {error}"}
