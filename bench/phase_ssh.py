"""
A real ssh login, four ways in one run, interleaved run by run so that drift hits all alike:
direct (sshd's open port), through sig2knock (``ssh -o ProxyCommand='sig2knockc --stdio
NAME'``, NAME imported from an invitation, its key saved by ``--save-key``; the daemon proxies
to sshd on 127.0.0.1), ``knock ... && ssh`` and ``fwknop ... && ssh`` (sshd's guarded port,
which iptables drops on br0 until the tool opens it). Each login is ``ssh ... true`` with a
key, host key checked, and timed from the process start to its exit.

sshd (Debian's openssh-server) runs in the server namespace with its own configuration, host
key and authorized key in the lab's directory, on two ports: DIRECT_PORT, open, and
GUARDED_PORT, for the knocks. It listens on every address of the namespace, 127.0.0.1 too.
"""

import os
import shutil
import subprocess
import time

from driver import BIN, CHEAP_KDF, PASSWORD, SERVER_IP, log, med
from phase_fwknop import fwknopd_running
from phase_knockd import knockd_running

DIRECT_PORT = 2200
GUARDED_PORT = 2222
HOST_ALIAS = "lab-sshd"  # the name the known-hosts file holds, whichever way ssh goes
SSH_USER = "sshbench"  # the sig2knock user of these logins
SERVER_NAME = "lab"  # its entry in the client's servers.conf
MIN_LOGINS = 11
PRIVSEP_DIRECTORY = "/run/sshd"  # Debian's sshd refuses to start without it


def sshd_binary():
    return shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd")
                                    else None)


def start_sshd(bench, directory):
    """sshd in the server namespace, on DIRECT_PORT and GUARDED_PORT; returns the process."""
    lab = bench.lab
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"bench {name}",
                        "-f", os.path.join(directory, name)], check=True)
    authorized = os.path.join(directory, "authorized_keys")
    shutil.copy(os.path.join(directory, "client_key.pub"), authorized)
    os.chmod(authorized, 0o600)
    with open(os.path.join(directory, "host_key.pub")) as host_public:
        host_key = " ".join(host_public.read().split()[:2])
    with open(os.path.join(directory, "known_hosts"), "w") as known:
        known.write(f"{HOST_ALIAS} {host_key}\n")
    config = os.path.join(directory, "sshd_config")
    with open(config, "w") as out:
        out.write("\n".join([
            f"Port {DIRECT_PORT}", f"Port {GUARDED_PORT}", "ListenAddress 0.0.0.0",
            f"HostKey {directory}/host_key", f"AuthorizedKeysFile {authorized}",
            f"PidFile {directory}/sshd.pid", "PermitRootLogin prohibit-password",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
            "StrictModes no", "UseDNS no", "PrintMotd no", "PrintLastLog no",
            "LogLevel ERROR", ""]))
    os.makedirs(PRIVSEP_DIRECTORY, mode=0o755, exist_ok=True)
    process = lab.start("server", [sshd_binary(), "-D", "-e", "-f", config],
                        stderr=open(os.path.join(directory, "sshd.log"), "w"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listening = bench.srv("ss", "-Htln", f"sport = :{GUARDED_PORT}", check=False).stdout
        if listening.strip():
            return process
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"sshd did not start (see {directory}/sshd.log)")


def ssh_command(directory, *options, port=None, host=SERVER_IP):
    """``ssh ... root@host true`` with the lab's key and host key, nothing from ~/.ssh."""
    return ["ssh", "-F", "/dev/null", "-i", os.path.join(directory, "client_key"),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={directory}/known_hosts",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
            "-o", f"HostKeyAlias={HOST_ALIAS}", "-o", "LogLevel=ERROR",
            *options, *(["-p", str(port)] if port else []), f"root@{host}", "true"]


def enrol_client(bench, client_home):
    """
    As a new user is told to: ``sig2knockd_useradd -c CONFIG --host HOST`` (and a reload),
    ``sig2knockc --import INVITATION --name lab``, ``sig2knockc lab --save-key``.
    """
    lab = bench.lab
    config = os.path.join(lab.directory, "sig2knockd.conf")
    added = subprocess.run(
        [os.path.join(BIN, "sig2knockd_useradd"), "-c", config, "--host", SERVER_IP,
         "--password-stdin", "--kdf", CHEAP_KDF, "--allow-weak-kdf", SSH_USER],
        input=PASSWORD + "\n", capture_output=True, text=True, check=True)
    invitation = added.stdout.strip().splitlines()[-1]
    if not lab.hangup_and_wait("reloaded"):
        raise RuntimeError("the daemon did not reload with the new user")
    env = dict(os.environ, XDG_CONFIG_HOME=client_home)
    client = os.path.join(BIN, "sig2knockc")
    for argv, text in (([client, "--import", invitation, "--name", SERVER_NAME], ""),
                       ([client, SERVER_NAME, "--save-key", "--password-stdin"],
                        PASSWORD + "\n")):
        answer = bench.agent({"op": "run", "argv": argv, "input": text, "env": env})
        if answer.get("rc") != 0:
            raise RuntimeError(f"{' '.join(argv[:3])}: {answer.get('stderr', answer)[-300:]}")
    return env


def ssh(bench):
    if sshd_binary() is None:
        raise RuntimeError("no sshd: install Debian's openssh-server (./bootstrap --bench does)")
    lab = bench.lab
    directory = os.path.join(lab.directory, "ssh")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    logins = max(MIN_LOGINS, bench.runs)
    sshd = start_sshd(bench, directory)
    lab.start_daemon({"FIREWALL": "nftables", "FORWARD_TO_PORT": str(GUARDED_PORT)})
    try:
        env = enrol_client(bench, os.path.join(directory, "client-config"))
        proxy = f"ProxyCommand={os.path.join(BIN, 'sig2knockc')} --stdio {SERVER_NAME}"
        with knockd_running(bench, GUARDED_PORT) as (_, knock, close_knockd), \
                fwknopd_running(bench, GUARDED_PORT) as (_, spa, spa_env, close_fwknop, _):
            ssh_guarded = " ".join(ssh_command(directory, port=GUARDED_PORT))
            ways = {
                "direct": (ssh_command(directory, port=DIRECT_PORT), None, lambda: None),
                "sig2knock": (ssh_command(directory, "-o", proxy, host=SERVER_NAME), env,
                              lambda: None),
                "knockd": (["sh", "-c", f"{' '.join(knock)} && {ssh_guarded}"], None,
                           close_knockd),
                "fwknop": (["sh", "-c", f"{' '.join(spa)} && {ssh_guarded}"], spa_env,
                           close_fwknop),
            }
            times = {way: [] for way in ways}
            failed = {way: [] for way in ways}
            for index in range(logins):
                for way, (argv, way_env, close) in ways.items():
                    answer = bench.agent({"op": "run", "argv": argv, "env": way_env,
                                          "timeout": 30})
                    close()
                    if answer.get("rc") == 0:
                        times[way].append((answer["t1"] - answer["t0"]) * 1000)
                    else:
                        failed[way].append(answer.get("stderr", str(answer))[-300:])
                    time.sleep(0.05)
        bench.results["ssh"] = {"times": times, "failed": {w: len(f) for w, f in failed.items()},
                                "logins": logins}
        for way, errors in failed.items():
            if errors:
                bench.failures.append(f"ssh {way}: {len(errors)}/{logins} logins failed "
                                      f"({errors[0]})")
        log("ssh logins: " + ", ".join(f"{way} {med(values)}" for way, values in times.items()))
    finally:
        if lab.daemon.poll() is None:
            lab.stop_daemon()
        lab.daemon_command("--flush")
        sshd.terminate()
        sshd.wait(timeout=10)
