"""
sig2knock on the lab (``FIREWALL = nftables``, ``FIREWALL_POLICY = lockdown``, proxy forwarding
to the echo service): time to access with a saved key (``sig2knockc --save-key`` once, then
``--key-file`` on every login: the headline), with the password and the lab's cheap KDF, with
the password and the default scrypt cost; with a plain connect; duplicated knocks; under
attack; under a flood of P1s that each cost the daemon its full cryptography; 200 users at once.
"""

import collections
import os
import re
import time

from driver import (
    BIN,
    CHEAP_KDF,
    CLIENT_IP,
    CLK_TCK,
    CONTROL_PORT,
    DEFAULT_KDF,
    MANY,
    PASSWORD,
    SERVER_IP,
    log,
    med,
    proc_sample,
)


# The daemon counts every live session against its user, a granted one until its grant ends
# (SINGLECONN_PORTOPEN_TIME, 30 s), and caps a user at 16; twenty logins of one user within 30 s
# would wait for slots. So each set of runs knocks as a few users in turn, at most PER_USER runs
# each (the cost per knock does not depend on the user).
PER_USER = 8


def pool(first, count):
    """The users of a set of ``count`` runs: ``first``, ``first-2``, ..."""
    size = max(1, -(-count // PER_USER))
    return [first] + [f"{first}-{i}" for i in range(2, size + 1)]


def rotating(users, command):
    """Run ``i``'s client command: ``command(user)`` for the users in turn."""
    return lambda index: command(users[index % len(users)])


# The lab server's public key, set when its daemon starts (``sig2knockd --init`` printed it).
SERVER = {"key": ""}


def s2k_client(user, kdf):
    """``sig2knockc`` with the password on standard input."""
    return [os.path.join(BIN, "sig2knockc"), SERVER_IP, str(CONTROL_PORT), "--user", user,
            "--password-stdin", "--kdf", kdf, "--server-key", SERVER["key"], "--timeout", "10",
            "-v"]


def s2k_key_client(user, key_path):
    """``sig2knockc`` with the key saved by ``--save-key``: no password, no scrypt."""
    return [os.path.join(BIN, "sig2knockc"), SERVER_IP, str(CONTROL_PORT), "--user", user,
            "--key-file", key_path, "--server-key", SERVER["key"], "--timeout", "10", "-v"]


def key_path_of(bench, user):
    return os.path.join(bench.lab.directory, "client-config", "sig2knock", f"{user}.key")


def save_key(bench, user, kdf):
    """
    ``sig2knockc --save-key`` once, as a user is told to (it knocks too); the key file is in the
    lab's directory, which the agent in the client namespace reads like any other file.
    """
    key_path = key_path_of(bench, user)
    answer = bench.agent({"op": "run", "argv": s2k_client(user, kdf) + [
        "--save-key", "--key-file", key_path], "input": PASSWORD + "\n"})
    if answer.get("rc") != 0 or not os.path.exists(key_path):
        raise RuntimeError(f"sig2knockc --save-key failed ({answer.get('rc')}): "
                           f"{answer.get('stderr', answer.get('result', ''))[-300:]}")
    mode = os.stat(key_path).st_mode & 0o777
    if mode != 0o600:
        bench.failures.append(f"sig2knock: the saved key file has mode {mode:04o}, not 0600")
    return key_path


def check_key_used(bench, name, records):
    """The key-file runs must have read the key, not asked for a password or run scrypt."""
    derived = [r for r in records if "stderr" in r and "key read from" not in r["stderr"]]
    if derived:
        bench.failures.append(f"{name}: {len(derived)}/{len(records)} runs did not read "
                              "the saved key (see sig2knockc -v)")


def daemon_events(lab, since, source=CLIENT_IP):
    """What the daemon logged against ``source`` after offset ``since`` of its log, counted."""
    events = collections.Counter()
    for line in lab.log()[since:].splitlines():
        match = re.search(r"refused datagram from (\S+) port \d+: (\S+)", line)
        if match and match.group(1) == source:
            events[f"refused {match.group(2)}"] += 1
        elif "session expired: " in line and f"from {source} " in line:
            events["session expired"] += 1
    return events


def sig2knock(bench):
    lab = bench.lab
    results = bench.results
    users = {"key": pool("alice", bench.runs), "cheap": pool("carol", bench.runs),
             "scrypt": pool("bob", bench.runs), "plain": pool("dave", bench.plain_runs),
             "dup": pool("erin", 5), "attack": pool("frank", bench.attack_runs),
             "flood": pool("gina", bench.attack_runs)}
    many_users = [f"u{i:03d}" for i in range(MANY)]
    lab.extra_users = ([(u, DEFAULT_KDF) for u in users["scrypt"]]
                       + [(u, CHEAP_KDF) for kind, names in users.items() if kind != "scrypt"
                          for u in names if u != "alice"]
                       + [(u, CHEAP_KDF) for u in many_users])
    bench.notes.append("sig2knock users, each at most 8 runs of a set (the daemon caps a user "
                       "at 16 live sessions; an unused grant's session lives 30 s, a used one's "
                       "ends with its connection): " + "; ".join(
                           f"{kind} {','.join(names)}" for kind, names in users.items()))
    lab.start_daemon({"FIREWALL": "nftables", "FIREWALL_POLICY": "lockdown"})
    SERVER["key"] = lab.server_key
    pid = lab.daemon.pid
    since = len(lab.log())
    try:
        bench.closed_check("sig2knock")
        results["s2k_rss_idle"] = proc_sample(pid)[1] / 1024
        keys = {user: save_key(bench, user, CHEAP_KDF)
                for user in users["key"] + users["plain"] + users["flood"]}
        nothing = lambda: None  # noqa: E731 - grants are single-use, nothing to reset

        def key_client(user):
            return s2k_key_client(user, keys[user])

        results["s2k_key"] = bench.access_runs(
            "sig2knock-key", rotating(users["key"], key_client), bench.runs, nothing)
        check_key_used(bench, "sig2knock-key", results["s2k_key"])
        results["s2k_cheap"] = bench.access_runs(
            "sig2knock-cheap", rotating(users["cheap"], lambda u: s2k_client(u, CHEAP_KDF)),
            bench.runs, nothing, input_text=PASSWORD + "\n")
        results["s2k_scrypt"] = bench.access_runs(
            "sig2knock-scrypt", rotating(users["scrypt"], lambda u: s2k_client(u, DEFAULT_KDF)),
            bench.runs, nothing, input_text=PASSWORD + "\n")
        results["s2k_plain"] = bench.access_runs(
            "sig2knock-plain", rotating(users["plain"], key_client), bench.plain_runs, nothing,
            probe="plain")
        check_key_used(bench, "sig2knock-plain", results["s2k_plain"])
        dups = [bench.agent({"op": "dupknock", "host": SERVER_IP, "control_port": CONTROL_PORT,
                               "server_key": SERVER["key"],
                             "user": users["dup"][0], "password": PASSWORD, "kdf": CHEAP_KDF})
                for _ in range(5)]
        results["s2k_dup"] = dups
        events = daemon_events(lab, since)
        if events:
            bench.notes.append(f"sig2knock daemon, against {CLIENT_IP} before the attack runs: "
                               + ", ".join(f"{what} x{n}" for what, n in events.most_common()))
        records, cpu, rss, noise = bench.attack_window(
            pid, CONTROL_PORT,
            lambda: bench.access_runs(
                "sig2knock-attack", rotating(users["attack"], lambda u: s2k_client(u, CHEAP_KDF)),
                bench.attack_runs, nothing, input_text=PASSWORD + "\n", capture=False))
        results["s2k_attack"] = {"records": records, "cpu": cpu, "rss": rss, "noise": noise}
        results["s2k_p1_flood"] = p1_flood(
            bench, pid, lambda: bench.access_runs(
                "sig2knock-p1-flood", rotating(users["flood"], key_client), bench.attack_runs,
                nothing, capture=False))
        many_at_once(bench, pid, many_users)
    finally:
        if lab.daemon.poll() is None:
            lab.stop_daemon()
        lab.daemon_command("--flush")


# The P1 flood: this many P1s a second (the daemon's global pre-cryptography budget is 4000),
# from this many addresses, each a real P1 of alice's with one bit changed in its request: it
# passes every cheap check and the rate limits' per-source share, so each costs the daemon the
# three X25519 operations of opening it before it is refused.
P1_FLOOD_RATE = 4000
# 80 addresses: at 50 a second each (the per-source limit), together the global budget.
P1_FLOOD_SOURCES = [f"198.18.0.{host}" for host in range(10, 90)]


def p1_flood(bench, pid, body):
    """
    Run ``body`` (access runs) during a P1 flood from the intruder; return the records, the
    daemon's CPU, what the flood sent, and the daemon's CPU time per P1 opened here in-process.
    """
    from tests import attack_driver as driver, attack_tools as tools

    lab = bench.lab
    driver.add_addresses(lab, "intruder", "eth0", P1_FLOOD_SOURCES)
    alice = tools.lab_key("alice", PASSWORD, SERVER["key"])
    templates = [tools.make_p1("alice", alice, SERVER["key"]) for _ in range(8)]
    seconds = 8.0
    flood = driver.Background(lab, "intruder", "flood", {
        "target": [SERVER_IP, CONTROL_PORT], "sources": P1_FLOOD_SOURCES,
        "count": int(P1_FLOOD_RATE * seconds), "pace": seconds, "seconds": seconds + 5,
        "templates": [t.hex() for t in templates], "mix": {"flip_request": 1}, "seed": 3,
    })
    time.sleep(1.0)
    ticks0, _ = proc_sample(pid)
    wall0 = time.monotonic()
    records = body()
    ticks1, rss = proc_sample(pid)
    wall1 = time.monotonic()
    sent = flood.result(timeout=60)
    return {"records": records, "cpu": 100.0 * (ticks1 - ticks0) / CLK_TCK / (wall1 - wall0),
            "rss": rss / 1024, "flood": sent, "ms_per_p1": cost_per_p1()}


def cost_per_p1():
    """The CPU time, ms, of opening one P1 as the daemon does, here (median of 200)."""
    import statistics

    from sig2knock.protocol import keys, wire

    server = keys.generate()
    data = wire.seal_request(
        wire.KnockRequest(b"S" * 16, wire.now_ms(time.time()), 6, (1, 2, 3, 4)),
        wire.UserKey("alice", keys.generate()), server.public_key())[0]
    user = {"alice": keys.generate().public_key()}.get
    decoy = keys.generate().public_key()
    costs = []
    for _ in range(200):
        started = time.process_time()
        try:
            wire.open_request(data, identity=server, users=user, decoy=decoy,
                              now=time.time(), max_skew=60)
        except wire.MessageRejected:
            pass
        costs.append((time.process_time() - started) * 1000)
    return statistics.median(costs)


def burst(bench, pid, users):
    """
    ``users`` log in at once, each from its own address (the agent's ``many``): how many got
    access, when the last and the median did (ms after the start), their rounds, the daemon's
    RSS and CPU time.
    """
    ticks0, _ = proc_sample(pid)
    many = bench.agent({"op": "many", "host": SERVER_IP, "control_port": CONTROL_PORT,
                        "server_key": SERVER["key"],
                        "users": users, "addresses": bench.many_addresses,
                        "password": PASSWORD, "kdf": CHEAP_KDF, "timeout": 20})
    ticks1, rss = proc_sample(pid)
    if "results" not in many:
        raise RuntimeError(f"many: {many.get('result')}")
    ok = [r for r in many["results"] if r and r["result"] == "echo"]
    return {"ok": len(ok), "total": len(users), "rss": rss / 1024,
            "last_ms": (max(r["t"] for r in ok) - many["t0"]) * 1000 if ok else None,
            "median_ms": med([(r["t"] - many["t0"]) * 1000 for r in ok]),
            "rounds": [r["rounds"] for r in ok],
            "cpu_s": (ticks1 - ticks0) / CLK_TCK}


def many_at_once(bench, pid, users):
    time.sleep(1)
    summary = bench.results["s2k_many"] = burst(bench, pid, users)
    if summary["ok"] < MANY:
        bench.failures.append(f"sig2knock many: only {summary['ok']}/{MANY} got access")
    log(f"many: {summary['ok']}/{MANY}, last {summary['last_ms']} ms")
