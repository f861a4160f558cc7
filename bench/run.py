"""
sig2knock against knockd and fwknop on one namespace lab, in one run; prints one table.

    ./bootstrap && .venv/bin/python bench/run.py [--runs 20] [--json out.json]

Root only. Traffic stays in the lab's namespaces (198.18.0.0/15); every loop is bounded in count
and time; the lab is torn down in ``finally``. See docs/BENCHMARKS.md.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(BENCH)
sys.path.insert(0, REPOSITORY)

from tests import lab as lab_module  # noqa: E402
from tests.lab import CLIENT_IP, CONTROL_PORT, INTRUDER_IP, PASSWORD, SERVER_IP, Lab  # noqa: E402

PY = sys.executable
BIN = os.path.dirname(PY)
SERVICE_PORT = lab_module.SERVICE_PORT
CHEAP_KDF = lab_module.CHEAP_KDF
DEFAULT_KDF = "scrypt:n=32768,r=8,p=1"
KNOCKD_SEQUENCE = (7001, 8002, 9003)
FWKNOP_PORT = 62201
MANY = 200
APT_PACKAGES = ("knockd", "fwknop-server", "fwknop-client", "iperf3", "socat")
CAPTURE_FILTER = f"host {CLIENT_IP} and (udp or (tcp[13] & 2 != 0))"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(text):
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def ensure_packages():
    missing = [tool for tool in ("knockd", "knock", "fwknopd", "fwknop", "iperf3", "socat")
               if shutil.which(tool) is None]
    if missing:
        log(f"installing {' '.join(APT_PACKAGES)} (missing: {' '.join(missing)})")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", *APT_PACKAGES], check=True, env=env,
                       stdout=subprocess.DEVNULL)


# -- statistics -------------------------------------------------------------------------------


def med(values):
    return statistics.median(values) if values else None


def cell(values, digits=1, unit=""):
    if not values:
        return "n/a"
    return (f"{med(values):.{digits}f}{unit} ({min(values):.{digits}f}-{max(values):.{digits}f})")


def proc_sample(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)
    rss_kb = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return ticks, rss_kb


# -- the bench --------------------------------------------------------------------------------


class BenchLab(Lab):
    """The tests' lab, plus extra users (default-cost scrypt, and many cheap ones)."""

    extra_users = ()

    def write_server_files(self, settings, users):
        path = super().write_server_files(settings, users)
        from sig2knock.kdf import KdfParams
        from sig2knock.users import format_user_line

        lines = [format_user_line(user, PASSWORD, KdfParams.parse(kdf))
                 for user, kdf in self.extra_users]
        with open(os.path.join(self.directory, "user.txt"), "a") as users_file:
            users_file.write("".join(line + "\n" for line in lines))
        return path


class Bench:
    def __init__(self, runs, attack_runs):
        self.runs = runs
        self.attack_runs = attack_runs
        self.lab = BenchLab()
        self.results = {}
        self.notes = []
        self.failures = []

    # plumbing

    def agent(self, request, timeout=120):
        self.agent_process.stdin.write(json.dumps(request) + "\n")
        self.agent_process.stdin.flush()
        line = self.agent_process.stdout.readline()
        if not line:
            raise RuntimeError("the client agent died")
        return json.loads(line)

    def srv(self, *command, check=True):
        return self.lab.ns("server", list(command), check=check)

    def start_capture(self, name, seconds=600):
        path = os.path.join(self.lab.directory, f"{name}.pcap.txt")
        process = self.lab.start(
            "server", [PY, os.path.join(BENCH, "capture.py"), "br0", CAPTURE_FILTER, path,
                       str(seconds)], stdout=subprocess.PIPE, text=True)
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("capture did not start")
        time.sleep(0.2)
        return process, path

    def stop_capture(self, capture):
        process, path = capture
        time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        packets = []
        with open(path) as lines:
            for line in lines:
                ts, proto, src, sport, dst, dport, flags, length = line.split()
                packets.append((float(ts), int(proto), src, int(sport), dst, int(dport),
                                int(flags)))
        return packets

    def start_noise(self, udp_port, seconds):
        process = self.lab.start(
            "intruder", [PY, os.path.join(BENCH, "noise.py"), SERVER_IP, str(udp_port), "20000",
                         "2000", str(seconds)], stdout=subprocess.PIPE, text=True)
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("noise did not start")
        time.sleep(0.5)
        return process

    def stop_noise(self, process):
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=10)
        return out.strip()

    def access_runs(self, name, argv, count, reset, input_text="", port=None, env=None,
                    capture=True, probe_timeout=3.0):
        """``count`` times: reset, client command, probe; the per-run records."""
        cap = self.start_capture(name) if capture else None
        records = []
        for _ in range(count):
            reset()
            answer = self.agent({"op": "access", "argv": argv, "input": input_text, "port": port,
                                 "host": SERVER_IP, "env": env, "probe_timeout": probe_timeout})
            answer["ms"] = ((answer["t_echo"] - answer["t0"]) * 1000
                            if answer.get("result") == "echo" else None)
            records.append(answer)
            time.sleep(0.05)
        reset()
        if cap:
            packets = self.stop_capture(cap)
            for i, record in enumerate(records):
                end = records[i + 1]["t0"] if i + 1 < len(records) else float("inf")
                record["packets"] = [p for p in packets if record["t0"] <= p[0] < end]
        bad = [r for r in records if r["ms"] is None]
        if bad:
            self.failures.append(f"{name}: {len(bad)}/{count} runs without access "
                                 f"({bad[0].get('result')}: {bad[0].get('stderr', '')[-300:]})")
        log(f"{name}: median {med([r['ms'] for r in records if r['ms'] is not None])} ms, "
            f"{len(bad)} failed")
        return records

    def attack_window(self, pid, udp_port, body):
        """Run ``body`` under noise; return (body's value, cpu %, max RSS MB, noise summary)."""
        noise = self.start_noise(udp_port, seconds=120)
        ticks0, _ = proc_sample(pid)
        wall0 = time.monotonic()
        try:
            value = body()
            time.sleep(max(0.0, 5.0 - (time.monotonic() - wall0)))
        finally:
            with open(f"/proc/{pid}/comm") as comm:
                self.notes.append(f"attack window: CPU/RSS read from pid {pid} "
                                  f"({comm.read().strip()}), {time.monotonic() - wall0:.1f} s")
            ticks1, rss = proc_sample(pid)
            wall1 = time.monotonic()
            summary = self.stop_noise(noise)
        cpu = 100.0 * (ticks1 - ticks0) / CLK_TCK / (wall1 - wall0)
        return value, cpu, rss / 1024, summary

    # the lab

    def build(self):
        lab = self.lab
        lab.build()
        lab.start_echo_service("0.0.0.0", SERVICE_PORT)  # serves 127.0.0.1 too
        batch = "".join(f"address add 198.18.{1 + i // 100}.{1 + i % 100}/32 dev eth0\n"
                        for i in range(MANY))
        path = os.path.join(lab.directory, "addresses.batch")
        with open(path, "w") as batch_file:
            batch_file.write(batch)
        lab.ns("client", ["ip", "-batch", path])
        for net in ("198.18.1.0/24", "198.18.2.0/24"):
            self.srv("ip", "route", "add", net, "dev", "br0")
        self.many_addresses = [f"198.18.{1 + i // 100}.{1 + i % 100}" for i in range(MANY)]
        self.agent_process = lab.start("client", [PY, os.path.join(BENCH, "agent.py")],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                       cwd=REPOSITORY)
        if self.agent_process.stdout.readline().strip() != "ready":
            raise RuntimeError("the client agent did not start")

    def closed_check(self, label, port=SERVICE_PORT):
        result = self.agent({"op": "access", "argv": ["true"], "port": port, "host": SERVER_IP,
                             "probe_timeout": 0.5})
        if result["result"] == "echo":
            self.failures.append(f"{label}: port {port} open before any knock")

    def base_iptables(self):
        self.srv("iptables", "-A", "INPUT", "-i", "br0", "-p", "tcp", "--dport",
                 str(SERVICE_PORT), "-j", "DROP")

    def flush_iptables(self):
        self.srv("iptables", "-F", check=False)
        self.srv("iptables", "-X", check=False)

    # knockd

    def knockd(self):
        lab = self.lab
        self.base_iptables()
        rule = ["-s", f"{CLIENT_IP}/32", "-p", "tcp", "--dport", str(SERVICE_PORT), "-j", "ACCEPT"]
        conf = os.path.join(lab.directory, "knockd.conf")
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
                f"  command = /usr/sbin/iptables -I INPUT {' '.join(rule).replace(CLIENT_IP, '%IP%')}\n")
        daemon = lab.start("server", ["knockd", "-c", conf, "-i", "br0"])
        time.sleep(1.0)
        if daemon.poll() is not None:
            raise RuntimeError("knockd did not start")
        self.closed_check("knockd")

        def reset():
            for _ in range(5):
                if self.srv("iptables", "-D", "INPUT", *rule, check=False).returncode:
                    break

        knock = ["knock", SERVER_IP, *map(str, KNOCKD_SEQUENCE)]
        self.results["knockd"] = self.access_runs("knockd", knock, self.runs, reset,
                                                  port=SERVICE_PORT)
        # a duplicated knock port loses the sequence
        dup = ["knock", SERVER_IP, *map(str, (KNOCKD_SEQUENCE[0],) + KNOCKD_SEQUENCE)]
        self.results["knockd_dup"] = self.access_runs("knockd-dup", dup, 5, reset, capture=False,
                                                      probe_timeout=1.0, port=SERVICE_PORT)
        self.failures = [f for f in self.failures if not f.startswith("knockd-dup")]
        records, cpu, rss, noise = self.attack_window(
            daemon.pid, CONTROL_PORT,
            lambda: self.access_runs("knockd-attack", knock, self.attack_runs, reset,
                                     capture=False, port=SERVICE_PORT))
        self.results["knockd_attack"] = {"records": records, "cpu": cpu, "rss": rss,
                                         "noise": noise}
        self.results["knockd_rss_idle"] = proc_sample(daemon.pid)[1] / 1024
        daemon.terminate()
        daemon.wait(timeout=10)
        self.flush_iptables()

    # fwknop

    def fwknop(self):
        lab = self.lab
        home = os.path.join(lab.directory, "fwknop-home")
        run_dir = os.path.join(lab.directory, "fwknop-run")
        os.makedirs(home)
        os.makedirs(run_dir, mode=0o700)
        env = dict(os.environ, HOME=home)
        keys = subprocess.run(["fwknop", "--key-gen"], capture_output=True, text=True, env=env,
                              check=True).stdout
        key = re.search(r"^KEY_BASE64:\s*(\S+)", keys, re.M).group(1)
        hmac = re.search(r"^HMAC_KEY_BASE64:\s*(\S+)", keys, re.M).group(1)
        conf = os.path.join(lab.directory, "fwknopd.conf")
        access = os.path.join(lab.directory, "access.conf")
        for path, text in (
            (conf, f"PCAP_INTFC br0;\nFWKNOP_RUN_DIR {run_dir};\n"),
            (access, f"SOURCE ANY\nOPEN_PORTS tcp/{SERVICE_PORT}\nKEY_BASE64 {key}\n"
                     f"HMAC_KEY_BASE64 {hmac}\n"),
        ):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
                out.write(text)
        self.base_iptables()
        daemon = lab.start("server", ["fwknopd", "-f", "-c", conf, "-a", access, "-i", "br0",
                                      "-p", f"{run_dir}/fwknopd.pid",
                                      "-d", f"{run_dir}/digest.cache"],
                           stdout=open(os.path.join(lab.directory, "fwknopd.log"), "w"),
                           stderr=subprocess.STDOUT)
        time.sleep(1.5)
        if daemon.poll() is not None:
            raise RuntimeError("fwknopd did not start: " + open(
                os.path.join(lab.directory, "fwknopd.log")).read()[-500:])
        self.closed_check("fwknop")

        def reset():
            self.srv("iptables", "-F", "FWKNOP_INPUT", check=False)

        client = ["fwknop", "-A", f"tcp/{SERVICE_PORT}", "-a", CLIENT_IP, "-D", SERVER_IP,
                  "--key-base64-rijndael", key, "--key-base64-hmac", hmac, "--no-save-args"]
        self.results["fwknop"] = self.access_runs("fwknop", client, self.runs, reset, env=env,
                                                  port=SERVICE_PORT)
        records, cpu, rss, noise = self.attack_window(
            daemon.pid, FWKNOP_PORT,
            lambda: self.access_runs("fwknop-attack", client, self.attack_runs, reset, env=env,
                                     capture=False, port=SERVICE_PORT))
        self.results["fwknop_attack"] = {"records": records, "cpu": cpu, "rss": rss,
                                         "noise": noise}
        self.results["fwknop_rss_idle"] = proc_sample(daemon.pid)[1] / 1024
        if not ms_list(records):
            self.notes.append("fwknopd alive after the attack: "
                              f"{daemon.poll() is None}; its log: " + open(os.path.join(
                                  lab.directory, "fwknopd.log")).read()[-300:].replace("\n", " | "))
        daemon.terminate()
        daemon.wait(timeout=10)
        self.flush_iptables()

    # sig2knock

    def s2k_client(self, user, kdf):
        return [os.path.join(BIN, "sig2knockc"), SERVER_IP, str(CONTROL_PORT), "--user", user,
                "--password-stdin", "--kdf", kdf, "--timeout", "10", "-v"]

    def sig2knock(self):
        lab = self.lab
        self.many_users = [f"u{i:03d}" for i in range(MANY)]
        lab.extra_users = [("bob", DEFAULT_KDF)] + [(u, CHEAP_KDF) for u in self.many_users]
        lab.start_daemon({"FIREWALL": "nftables", "FIREWALL_POLICY": "lockdown"})
        pid = lab.daemon.pid
        self.closed_check("sig2knock")
        self.results["s2k_rss_idle"] = proc_sample(pid)[1] / 1024
        nothing = lambda: None  # noqa: E731 - grants are single-use, nothing to reset
        self.results["s2k_cheap"] = self.access_runs(
            "sig2knock-cheap", self.s2k_client("alice", CHEAP_KDF), self.runs, nothing,
            input_text=PASSWORD + "\n")
        self.results["s2k_scrypt"] = self.access_runs(
            "sig2knock-scrypt", self.s2k_client("bob", DEFAULT_KDF), self.runs, nothing,
            input_text=PASSWORD + "\n")
        dups = [self.agent({"op": "dupknock", "host": SERVER_IP, "control_port": CONTROL_PORT,
                            "user": "alice", "password": PASSWORD, "kdf": CHEAP_KDF})
                for _ in range(5)]
        self.results["s2k_dup"] = dups
        records, cpu, rss, noise = self.attack_window(
            pid, CONTROL_PORT,
            lambda: self.access_runs("sig2knock-attack", self.s2k_client("alice", CHEAP_KDF),
                                     self.attack_runs, nothing, input_text=PASSWORD + "\n",
                                     capture=False))
        self.results["s2k_attack"] = {"records": records, "cpu": cpu, "rss": rss, "noise": noise}
        # many users at once
        time.sleep(1)
        ticks0, _ = proc_sample(pid)
        many = self.agent({"op": "many", "host": SERVER_IP, "control_port": CONTROL_PORT,
                           "users": self.many_users, "addresses": self.many_addresses,
                           "password": PASSWORD, "kdf": CHEAP_KDF, "timeout": 20}, timeout=120)
        ticks1, rss = proc_sample(pid)
        ok = [r for r in many["results"] if r and r["result"] == "echo"]
        self.results["s2k_many"] = {
            "ok": len(ok), "total": MANY, "rss": rss / 1024,
            "last_ms": (max(r["t"] for r in ok) - many["t0"]) * 1000 if ok else None,
            "median_ms": med([(r["t"] - many["t0"]) * 1000 for r in ok]),
            "rounds": [r["rounds"] for r in ok],
            "cpu_s": (ticks1 - ticks0) / CLK_TCK}
        if len(ok) < MANY:
            self.failures.append(f"sig2knock many: only {len(ok)}/{MANY} got access")
        log(f"many: {self.results['s2k_many']['ok']}/{MANY}, last "
            f"{self.results['s2k_many']['last_ms']} ms")
        lab.stop_daemon()
        lab.daemon_command("--flush")

    # throughput

    def bulk(self, port):
        return self.agent({"op": "bulk", "host": SERVER_IP, "port": port, "seconds": 5},
                          timeout=90)["gbps"]

    def knock_port(self):
        answer = self.agent({"op": "run", "argv": self.s2k_client("alice", CHEAP_KDF)[:-1],
                             "input": PASSWORD + "\n"})
        return int(answer["stdout"].split()[0])

    def throughput(self):
        lab = self.lab
        reps = 3
        for host, port in (("127.0.0.1", 5201), ("0.0.0.0", 5202)):
            sink = lab.start("server", [PY, os.path.join(BENCH, "sink.py"), host, str(port), "40",
                                        "900"], stdout=subprocess.PIPE, text=True)
            sink.stdout.readline()
        lab.start("server", ["socat", "TCP-LISTEN:5203,fork,reuseaddr", "TCP:127.0.0.1:5201"],
                  stderr=subprocess.DEVNULL)
        lab.start("server", ["iperf3", "-s", "-p", "5204"], stdout=subprocess.DEVNULL)
        lab.start("server", ["socat", "TCP-LISTEN:5205,fork,reuseaddr", "TCP:127.0.0.1:5204"],
                  stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        tp = self.results["throughput"] = {}
        tp["direct"] = [self.bulk(5202) for _ in range(reps)]
        tp["socat"] = [self.bulk(5203) for _ in range(reps)]
        for name, port in (("iperf3_direct", 5204), ("iperf3_socat", 5205)):
            values = []
            for _ in range(reps):
                answer = self.agent({"op": "run", "argv": ["iperf3", "-c", SERVER_IP, "-p",
                                                           str(port), "-t", "5", "-J"]})
                try:
                    values.append(json.loads(answer["stdout"])["end"]["sum_received"]
                                  ["bits_per_second"] / 1e9)
                except (ValueError, KeyError):
                    self.failures.append(f"{name}: {answer['stderr'][-200:]}")
            tp[name] = values
        log(f"throughput direct/socat: {tp['direct']} {tp['socat']}")
        settings = {"FIREWALL": "nftables", "FORWARD_TO_PORT": "5201"}
        lab.start_daemon(settings)
        tp["s2k_proxy"] = [self.bulk(self.knock_port()) for _ in range(reps)]
        lab.stop_daemon()
        # FORWARD_MODE = nat, if this checkout's daemon accepts it
        lab.write_server_files(dict(settings, FORWARD_MODE="nat"), {"alice": PASSWORD})
        check = lab.daemon_command("--check-config")
        if check.returncode == 0:
            lab.start_daemon(dict(settings, FORWARD_MODE="nat"))
            tp["s2k_nat"] = [self.bulk(self.knock_port()) for _ in range(reps)]
            lab.stop_daemon()
        else:
            self.notes.append("FORWARD_MODE = nat not accepted by this checkout's configuration "
                              f"({(check.stdout + check.stderr).strip()[-160:]}); row skipped")
        lab.daemon_command("--flush")
        log(f"throughput s2k: {tp['s2k_proxy']} nat: {tp.get('s2k_nat')}")

    # client start-up

    def startup(self):
        help_ms = []
        for _ in range(10):
            answer = self.agent({"op": "run", "argv": [os.path.join(BIN, "sig2knockc"),
                                                       "--help"]})
            help_ms.append((answer["t1"] - answer["t0"]) * 1000)
        self.results["help_ms"] = help_ms
        answer = self.agent({"op": "run", "argv": [PY, "-X", "importtime", "-m",
                                                   "sig2knock.scripts.client", "--help"]})
        rows = []
        for line in answer["stderr"].splitlines():
            match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
            if match:
                rows.append((int(match.group(2)), len(match.group(3)), match.group(4)))
        top_level = sorted([r for r in rows if r[1] <= 1], reverse=True)[:8]
        self.results["importtime"] = [(name, us / 1000) for us, _, name in top_level]

    # run it all

    def run(self):
        try:
            self.build()
            for phase in (self.knockd, self.fwknop, self.sig2knock, self.throughput,
                          self.startup):
                try:
                    phase()
                except Exception as error:  # keep the other phases' figures
                    self.failures.append(f"{phase.__name__}: {type(error).__name__}: {error}")
                    log(f"phase {phase.__name__} failed: {error}")
                    self.flush_iptables()
        finally:
            try:
                self.agent_process.stdin.close()
            except Exception:
                pass
            self.lab.close()


# -- the table --------------------------------------------------------------------------------


def ms_list(records):
    return [r["ms"] for r in records if r.get("ms") is not None]


def first_packet_ms(records, proto):
    values = []
    for record in records:
        packets = [p for p in record.get("packets", ()) if p[2] == CLIENT_IP and p[1] == proto]
        if packets:
            values.append((packets[0][0] - record["t0"]) * 1000)
    return values


def s2k_breakdown(records):
    """Per run: start->P1, P1->P3 (server reaction incl. rounds), P3->echo, rounds."""
    parts = {"start_p1": [], "reaction": [], "p3_echo": [], "rounds": [], "last_p2_p3": [],
             "client_exit_ms": []}
    for record in records:
        packets = record.get("packets", ())
        p1 = [p for p in packets if p[1] == 17 and p[2] == CLIENT_IP and p[5] == CONTROL_PORT]
        p3 = [p for p in packets if p[1] == 17 and p[3] == CONTROL_PORT and p[4] == CLIENT_IP]
        match = re.findall(r"round (\d+)", record.get("stderr", ""))
        if match:
            parts["rounds"].append(max(map(int, match)))
        if not p1 or not p3 or record.get("t_echo") is None:
            continue
        parts["start_p1"].append((p1[0][0] - record["t0"]) * 1000)
        parts["reaction"].append((p3[0][0] - p1[0][0]) * 1000)
        before = [p for p in p1 if p[0] < p3[0][0]]
        parts["last_p2_p3"].append((p3[0][0] - before[-1][0]) * 1000)
        parts["p3_echo"].append((record["t_echo"] - p3[0][0]) * 1000)
        parts["client_exit_ms"].append((record["t_client"] - p3[0][0]) * 1000)
    return parts


def ratio(s2k, others, higher_better=False):
    others = [o for o in others if o is not None]
    if s2k is None or not others:
        return "n/a"
    best = max(others) if higher_better else min(others)
    return f"{s2k / best:.2f}x"


def table(bench):
    r = bench.results
    rows = []
    targets = []

    def row(metric, k, f, s, ratio_text):
        rows.append((metric, k, f, s, ratio_text))

    k_ms, f_ms = ms_list(r.get("knockd", [])), ms_list(r.get("fwknop", []))
    sc_ms, ss_ms = ms_list(r.get("s2k_cheap", [])), ms_list(r.get("s2k_scrypt", []))
    row("1. time to access, ms (cheap KDF for sig2knock)", cell(k_ms), cell(f_ms), cell(sc_ms),
        ratio(med(sc_ms), [med(k_ms), med(f_ms)]))
    row("1. time to access, ms (sig2knock default scrypt n=2^15,r=8)", "", "", cell(ss_ms),
        ratio(med(ss_ms), [med(k_ms), med(f_ms)]))
    for label, key in (("knockd", "knockd"), ("fwknop", "fwknop"), ("sig2knock", "s2k_cheap")):
        raced = sum(1 for rec in r.get(key, []) if rec.get("attempts", 1) > 1)
        if raced:
            bench.notes.append(f"{label}: in {raced}/{len(r[key])} runs the first SYN of the "
                               "probe arrived before the rule and was dropped (a real ssh would "
                               "wait ~1 s for the retransmission; the probe retries every 5 ms)")
    parts = s2k_breakdown(r.get("s2k_cheap", []))
    parts_scrypt = s2k_breakdown(r.get("s2k_scrypt", []))
    row("2. server reaction first P1 -> P3 on the wire, ms", "n/a", "n/a",
        cell(parts["reaction"], 2), "")
    row("2. ... final P2 -> P3 (grant step: firewall + listener), ms", "n/a", "n/a",
        cell(parts["last_p2_p3"], 2), "")
    row("2. client rounds needed (cheap / scrypt)", "", "",
        f"{cell(parts['rounds'], 0)} / {cell(parts_scrypt['rounds'], 0)}", "")
    row("   breakdown: process start -> P1 on the wire, ms (cheap / scrypt)", "", "",
        f"{cell(parts['start_p1'])} / {cell(parts_scrypt['start_p1'])}", "")
    row("   breakdown: P3 on the wire -> client exited, ms", "", "",
        cell(parts["client_exit_ms"]), "")
    row("   breakdown: P3 on the wire -> echo received, ms", "", "", cell(parts["p3_echo"]), "")
    tp = r.get("throughput", {})
    row("3. throughput Gbit/s, 1 TCP stream 5 s x3 (knockd/fwknop: kernel path; s2k: proxy)",
        cell(tp.get("direct"), 2), cell(tp.get("direct"), 2), cell(tp.get("s2k_proxy"), 2),
        ratio(med(tp.get("s2k_proxy")), [med(tp.get("direct"))], True))
    row("3. throughput via socat forwarder (reference), Gbit/s", cell(tp.get("socat"), 2), "", "",
        ratio(med(tp.get("s2k_proxy")), [med(tp.get("socat"))], True) + " s2k/socat"
        if tp.get("socat") else "")
    if "s2k_nat" in tp:
        row("3. throughput sig2knock FORWARD_MODE=nat, Gbit/s", "", "", cell(tp["s2k_nat"], 2),
            ratio(med(tp["s2k_nat"]), [med(tp.get("direct"))], True))
    else:
        row("3. throughput sig2knock FORWARD_MODE=nat", "", "", "skipped (not available)", "")
    row("3. iperf3 cross-check direct / via socat, Gbit/s", cell(tp.get("iperf3_direct"), 2),
        cell(tp.get("iperf3_socat"), 2), "n/a (iperf3 needs 2 conns)", "")
    ka, fa, sa = r.get("knockd_attack", {}), r.get("fwknop_attack", {}), r.get("s2k_attack", {})
    ka_ms, fa_ms = ms_list(ka.get("records", [])), ms_list(fa.get("records", []))
    sa_ms = ms_list(sa.get("records", []))
    row("4. time to access under attack (20k junk UDP/s + 2k SYN/s), ms", cell(ka_ms),
        cell(fa_ms), cell(sa_ms), ratio(med(sa_ms), [med(ka_ms), med(fa_ms)]))
    row("4. access under attack, runs ok", f"{len(ka_ms)}/{len(ka.get('records', []))}",
        f"{len(fa_ms)}/{len(fa.get('records', []))}", f"{len(sa_ms)}/{len(sa.get('records', []))}",
        "")

    def num(value, fmt):
        return fmt.format(value) if value is not None else "n/a"

    row("4. daemon CPU % during attack", num(ka.get("cpu"), "{:.0f}%"),
        num(fa.get("cpu"), "{:.0f}%"), num(sa.get("cpu"), "{:.0f}%"), "")
    row("4. daemon RSS MB: idle / end of attack",
        f"{num(r.get('knockd_rss_idle'), '{:.1f}')} / {num(ka.get('rss'), '{:.1f}')}",
        f"{num(r.get('fwknop_rss_idle'), '{:.1f}')} / {num(fa.get('rss'), '{:.1f}')}",
        f"{num(r.get('s2k_rss_idle'), '{:.1f}')} / {num(sa.get('rss'), '{:.1f}')}", "")
    kd = r.get("knockd_dup", [])
    sd = r.get("s2k_dup", [])
    row("4. duplicated knock (knockd: 1,1,2,3; s2k: every knock twice), access",
        f"{sum(1 for x in kd if x.get('ms'))}/{len(kd)}", "n/a (single packet)",
        f"{sum(1 for x in sd if x.get('result') == 'echo')}/{len(sd)}", "")
    many = r.get("s2k_many", {})
    row(f"5. {MANY} clients at once on distinct addresses: all ok / last access ms", "not run",
        "not run", f"{many.get('ok', 0)}/{MANY}, last {num(many.get('last_ms'), '{:.0f}')} ms, "
        f"median {num(many.get('median_ms'), '{:.0f}')} ms", "")
    row("5. ... rounds / daemon RSS MB / daemon CPU s", "", "",
        f"{cell(many.get('rounds', []), 0)} / {num(many.get('rss'), '{:.1f}')} / "
        f"{num(many.get('cpu_s'), '{:.2f}')}", "")
    kf, ff = first_packet_ms(r.get("knockd", []), 6), first_packet_ms(r.get("fwknop", []), 17)
    sf = parts["start_p1"]
    row("6. process start -> first packet on the wire, ms", cell(kf), cell(ff), cell(sf),
        ratio(med(sf), [med(kf), med(ff)]))
    row("6. `sig2knockc --help` wall time, ms", "", "", cell(r.get("help_ms", [])), "")

    if med(sc_ms) is not None and med(k_ms) is not None and med(f_ms) is not None:
        best = min(med(k_ms), med(f_ms))
        targets.append(f"time to access: sig2knock {med(sc_ms):.1f} ms vs best other "
                       f"{best:.1f} ms -> {'MET' if med(sc_ms) < best else 'NOT MET'}")
    if parts["reaction"]:
        targets.append(f"server reaction ~2 ms: median {med(parts['reaction']):.2f} ms -> "
                       f"{'MET' if med(parts['reaction']) <= 2.0 else 'NOT MET'}")
    return rows, targets


def render(bench):
    rows, targets = table(bench)
    header = ("metric", "knockd", "fwknop", "sig2knock", "s2k / best other")
    widths = [max(len(str(x[i])) for x in rows + [header]) for i in range(5)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
    out = [f"runs={bench.runs} (attack runs={bench.attack_runs}); cells: median (min-max); "
           f"nproc={os.cpu_count()}, kernel {os.uname().release}", ""] + lines
    imports = bench.results.get("importtime")
    if imports:
        out += ["", "sig2knockc top-level imports (cumulative ms, -X importtime): " +
                ", ".join(f"{name} {ms:.1f}" for name, ms in imports)]
    for label, key in (("knockd", "knockd_attack"), ("fwknop", "fwknop_attack"),
                       ("sig2knock", "s2k_attack")):
        if bench.results.get(key, {}).get("noise"):
            out.append(f"noise sent during {label} attack runs: {bench.results[key]['noise']}")
    out += ["", "targets:"] + [f"  {t}" for t in targets]
    if bench.notes:
        out += ["", "notes:"] + [f"  {n}" for n in bench.notes]
    if bench.failures:
        out += ["", "failures:"] + [f"  {f}" for f in bench.failures]
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per time-to-access figure")
    parser.add_argument("--attack-runs", type=int, default=None,
                        help="runs under attack per tool (default: runs / 2, at least 5)")
    parser.add_argument("--json", help="also write the raw results here")
    options = parser.parse_args()
    why = lab_module.why_not_runnable()
    if why:
        sys.exit(f"bench: {why}")
    ensure_packages()
    attack_runs = options.attack_runs or max(5, options.runs // 2)
    bench = Bench(max(1, min(options.runs, 1000)), max(1, min(attack_runs, 1000)))
    started = time.monotonic()
    bench.run()
    text = render(bench)
    print(text)
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    if options.json:
        with open(options.json, "w") as out:
            json.dump({"results": bench.results, "notes": bench.notes,
                       "failures": bench.failures}, out, indent=1, default=str)


if __name__ == "__main__":
    main()
