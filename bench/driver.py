"""
The benchmark's driver: the lab (``tests/lab.py`` plus extra users and addresses), the client
agent in the client namespace, pcap captures on the server's bridge, the attack noise, the
timed access runs, and the loop over the phases. The phases themselves are in ``phase_*.py``,
the table in ``table.py``; ``run.py`` is the command line.
"""

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(BENCH)
if REPOSITORY not in sys.path:
    sys.path.insert(0, REPOSITORY)

from tests import lab as lab_module  # noqa: E402
from tests.lab import CLIENT_IP, PASSWORD, SERVER_IP, Lab  # noqa: E402

PY = sys.executable
BIN = os.path.dirname(PY)
SERVICE_PORT = lab_module.SERVICE_PORT
CONTROL_PORT = lab_module.CONTROL_PORT
CHEAP_KDF = lab_module.CHEAP_KDF
DEFAULT_KDF = "scrypt:n=32768,r=8,p=1"
MANY = 200
APT_PACKAGES = ("knockd", "fwknop-server", "fwknop-client", "iperf3", "socat", "openssh-server",
                "openssh-client")
CAPTURE_FILTER = f"host {CLIENT_IP} and (udp or (tcp[13] & 2 != 0))"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# the phases, in the order they run; ``--only`` picks some of them
PHASES = ("knockd", "fwknop", "sig2knock", "throughput", "startup", "ssh", "fsync")
PLAIN_PROBE_TIMEOUT = 10.0  # a blocking connect sees the SYN retransmissions at 1 s and 3 s


def log(text):
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def ensure_packages():
    missing = [tool for tool in ("knockd", "knock", "fwknopd", "fwknop", "iperf3", "socat", "ssh")
               if shutil.which(tool) is None]
    if not os.path.exists("/usr/sbin/sshd"):
        missing.append("sshd")
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


def ms_list(records):
    return [r["ms"] for r in records if r.get("ms") is not None]


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


# -- the lab ----------------------------------------------------------------------------------


class BenchLab(Lab):
    """The tests' lab, plus extra users (default-cost scrypt, and many cheap ones)."""

    extra_users = ()

    def write_server_files(self, settings, users):
        path = super().write_server_files(settings, users)
        from sig2knock.daemon.users import format_user_line
        from sig2knock.protocol.kdf import KdfParams
        from sig2knock.protocol.keys import parse_public_key

        server = parse_public_key(self.server_key)
        lines = [format_user_line(user, PASSWORD, server, KdfParams.parse(kdf))
                 for user, kdf in self.extra_users]
        with open(os.path.join(self.directory, "user.txt"), "a") as users_file:
            users_file.write("".join(line + "\n" for line in lines))
        return path


class Bench:
    """The lab, the agent and what the phases found (``results``, ``notes``, ``failures``)."""

    def __init__(self, runs, attack_runs, plain_runs, pairs):
        self.runs = runs
        self.attack_runs = attack_runs
        self.plain_runs = plain_runs
        self.pairs = pairs
        self.lab = BenchLab()
        self.results = {}
        self.notes = []
        self.failures = []
        self.phases_run = []  # the phases that ran (even if they failed part-way)
        self.phases_failed = []
        self.agent_process = None

    # plumbing

    def agent(self, request):
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
                                int(flags), int(length)))
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
                    capture=True, probe_timeout=3.0, probe="fast"):
        """
        ``count`` times: reset, client command, probe; the per-run records. ``argv`` is the
        client command, or a function of the run's index giving it. ``probe`` is
        ``fast`` (abandon an unanswered SYN after 5 ms and connect again) or ``plain`` (one
        blocking connect, as ssh does: a dropped SYN waits for the kernel's retransmission).
        """
        if probe == "plain":
            probe_timeout = max(probe_timeout, PLAIN_PROBE_TIMEOUT)
        cap = self.start_capture(name) if capture else None
        records = []
        for index in range(count):
            reset()
            command = argv(index) if callable(argv) else argv
            answer = self.agent({"op": "access", "argv": command, "input": input_text, "port": port,
                                 "host": SERVER_IP, "env": env, "probe_timeout": probe_timeout,
                                 "probe": probe})
            answer["ms"] = ((answer["t_echo"] - answer["t0"]) * 1000
                            if answer.get("result") == "echo" else None)
            records.append(answer)
            time.sleep(0.05)
        reset()
        if cap:
            packets = self.stop_capture(cap)
            for i, record in enumerate(records):
                end = records[i + 1]["t0"] if i + 1 < len(records) else float("inf")
                record["packets"] = [p for p in packets if record.get("t0", end) <= p[0] < end]
        bad = [r for r in records if r["ms"] is None]
        if bad:
            self.failures.append(f"{name}: {len(bad)}/{count} runs without access "
                                 f"({bad[0].get('result')}: {bad[0].get('stderr', '')[-300:]})")
        log(f"{name}: median {med(ms_list(records))} ms, {len(bad)} failed")
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

    def base_iptables(self, port=SERVICE_PORT):
        """Drop ``port`` on br0 (what knockd and fwknop then open per address)."""
        self.srv("iptables", "-A", "INPUT", "-i", "br0", "-p", "tcp", "--dport",
                 str(port), "-j", "DROP")

    def flush_iptables(self):
        self.srv("iptables", "-F", check=False)
        self.srv("iptables", "-X", check=False)

    def clean_up_after_failure(self):
        """What a failed phase may have left: a running daemon, its rules, iptables rules."""
        daemon = self.lab.daemon
        if daemon is not None and daemon.poll() is None:
            try:
                self.lab.stop_daemon()
            except Exception:
                daemon.kill()
                daemon.wait(timeout=10)
        if self.lab.daemon is not None:
            self.lab.daemon_command("--flush")
        self.flush_iptables()

    # run the phases

    def run(self, phases):
        """``phases``: (name, function of this bench) pairs, run in order on one lab."""
        try:
            self.build()
            for name, phase in phases:
                self.phases_run.append(name)
                started = time.monotonic()
                try:
                    phase(self)
                except Exception as error:  # keep the other phases' figures
                    self.phases_failed.append(name)
                    self.failures.append(f"{name}: {type(error).__name__}: {error}")
                    log(f"phase {name} failed: {error}")
                    self.clean_up_after_failure()
                log(f"phase {name}: {time.monotonic() - started:.0f} s")
        finally:
            try:
                self.agent_process.stdin.close()
            except Exception:
                pass
            self.lab.close()
