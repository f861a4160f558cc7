"""
The namespace lab for integration tests: a server, a client and an intruder, each in its own
network namespace, joined by a bridge in the server's namespace. Addresses come from the
benchmarking ranges (198.18.0.0/15, 2001:2::/48), so no packet can leave this machine.

Everything a ``Lab`` creates is removed by ``close``, which the tests register as a cleanup first,
so a failing test still tears the lab down.
"""

import configparser
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any, Dict, List, Optional, Sequence

from sig2knock.firewall.runner import find_tool

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)

SERVER_IP = "198.18.0.1"
CLIENT_IP = "198.18.0.2"
INTRUDER_IP = "198.18.0.3"
SERVER_IP6 = "2001:2::1"
CLIENT_IP6 = "2001:2::2"
INTRUDER_IP6 = "2001:2::3"
CONTROL_PORT = 1001
SERVICE_PORT = 7777
# The inner host behind the gateway (``Lab.add_inner_host``) and its service.
GATEWAY_INNER_IP = "198.19.0.1"
INNER_IP = "198.19.0.2"
INNER_PORT = 7778
PASSWORD = "correct horse battery staple"
CHEAP_KDF = "scrypt:n=1024,r=1,p=1"


def why_not_runnable() -> Optional[str]:
    """
    Why the lab cannot run here (not root, no ``ip``), or ``None`` when it can.
    """
    if os.geteuid() != 0:
        return "integration tests need root (network namespaces, packet capture); CI runs as root"
    if shutil.which("ip") is None:
        return "integration tests need iproute2's ip command"
    return None


def run(command: Sequence[str], check: bool = True, **options) -> subprocess.CompletedProcess:
    """
    Run ``command`` and return its result (text output); raise with its stderr when it fails.
    """
    result = subprocess.run(list(command), capture_output=True, text=True, **options)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr}")
    return result


# A TCP echo service: answers each connection with what it receives, each piece after the tag
# given as its third argument (none by default), so that a probe can tell which service answered.
ECHO_SERVICE = textwrap.dedent(
    """
    import socket, sys, threading
    tag = sys.argv[3].encode() if len(sys.argv) > 3 else b""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((sys.argv[1], int(sys.argv[2])))
    server.listen(16)
    print("listening", flush=True)
    def echo(connection):
        with connection:
            while True:
                data = connection.recv(65536)
                if not data:
                    return
                connection.sendall(tag + data)
    while True:
        connection, _ = server.accept()
        threading.Thread(target=echo, args=(connection,), daemon=True).start()
    """
)

# Connect, send, read the echo; prints "echo:<text>", "closed", "refused" or "timeout".
PROBE = textwrap.dedent(
    """
    import socket, sys
    host, port = sys.argv[1], int(sys.argv[2])
    payload, hold = sys.argv[3].encode(), float(sys.argv[4])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    probe.settimeout(float(sys.argv[5]))
    try:
        probe.connect((host, port))
        probe.sendall(payload)
        data = b""
        while len(data) < len(payload):
            chunk = probe.recv(65536)
            if not chunk:
                break
            data += chunk
        if hold:
            import time
            time.sleep(hold)
            probe.sendall(payload)
            data = probe.recv(65536)
        print("echo:" + data.decode() if data else "closed", flush=True)
    except ConnectionRefusedError:
        print("refused", flush=True)
    except ConnectionResetError:
        print("closed", flush=True)
    except socket.timeout:
        print("timeout", flush=True)
    """
)


def built_lab(test: Any) -> "Lab":
    """
    A lab for ``test`` (a trial test case): its teardown registered as a cleanup before anything
    is built, so a failed build or test still removes everything; then built, with the echo
    service running on the server's 127.0.0.1.
    """
    lab = Lab()
    test.addCleanup(lab.close)
    lab.build()
    lab.start_echo_service()
    return lab


class Lab:
    """
    Three namespaces (``server``, ``client``, ``intruder``) on one bridge, and the processes
    started in them. The daemon's commands are taken from ``server_bin`` and ``sig2knockc`` from
    ``client_bin`` (by default both beside the Python running the tests).
    """

    def __init__(self, server_bin: str = BIN, client_bin: str = BIN) -> None:
        self.server_bin = server_bin
        self.client_bin = client_bin
        self.prefix = f"s2k{os.getpid() % 100000}{int(time.time() * 1000) % 1000}"
        self.namespaces: Dict[str, str] = {}
        self.processes: List[subprocess.Popen] = []
        self.directory = tempfile.mkdtemp(prefix="sig2knock-lab-")
        # The server's public key (``sig2knockd --init`` prints it when the daemon is set up).
        self.server_key = ""
        self.daemon: Optional[subprocess.Popen] = None
        self.daemon_log = os.path.join(self.directory, "daemon.log")

    # -- building and tearing down ------------------------------------------------------------

    def build(self) -> None:
        """
        Create the namespaces, the bridge and the addresses, and bring everything up.
        """
        for role in ("server", "client", "intruder"):
            name = f"{self.prefix}-{role[0]}"
            run(["ip", "netns", "add", name])
            self.namespaces[role] = name
            self.ns(role, ["ip", "link", "set", "lo", "up"])
        self.ns("server", ["ip", "link", "add", "br0", "type", "bridge"])
        self.ns("server", ["ip", "addr", "add", f"{SERVER_IP}/24", "dev", "br0"])
        self.ns("server", ["ip", "-6", "addr", "add", f"{SERVER_IP6}/64", "dev", "br0", "nodad"])
        self.ns("server", ["ip", "link", "set", "br0", "up"])
        for role, ip, ip6 in (
            ("client", CLIENT_IP, CLIENT_IP6),
            ("intruder", INTRUDER_IP, INTRUDER_IP6),
        ):
            outside, inside = f"{role[0]}0", "eth0"
            veth = ["ip", "link", "add", outside, "type", "veth", "peer", "name", inside]
            self.ns("server", veth)
            self.ns("server", ["ip", "link", "set", inside, "netns", self.namespaces[role]])
            self.ns("server", ["ip", "link", "set", outside, "master", "br0", "up"])
            self.ns(role, ["ip", "addr", "add", f"{ip}/24", "dev", inside])
            self.ns(role, ["ip", "-6", "addr", "add", f"{ip6}/64", "dev", inside, "nodad"])
            self.ns(role, ["ip", "link", "set", inside, "up"])
            self.ns(role, ["ip", "route", "add", "default", "via", SERVER_IP])

    def close(self) -> None:
        """
        Stop every process and delete the namespaces (their links go with them).
        """
        for process in reversed(self.processes):
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        for name in self.namespaces.values():
            run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- running things -----------------------------------------------------------------------

    def ns_command(self, role: str, command: Sequence[str]) -> List[str]:
        """
        ``command`` run inside ``role``'s namespace.
        """
        return ["ip", "netns", "exec", self.namespaces[role], *command]

    def ns(self, role: str, command: Sequence[str], check: bool = True, **options):
        """
        Run ``command`` in ``role``'s namespace and wait for it.
        """
        return run(self.ns_command(role, command), check=check, **options)

    def start(self, role: str, command: Sequence[str], **options) -> subprocess.Popen:
        """
        Start ``command`` in ``role``'s namespace; it is killed by ``close``.
        """
        process = subprocess.Popen(self.ns_command(role, command), **options)
        self.processes.append(process)
        return process

    def add_inner_host(self) -> None:
        """
        A fourth namespace, ``inner``, behind the server (a gateway in front of another host):
        a veth from the server's namespace (``GATEWAY_INNER_IP``) to the inner host
        (``INNER_IP``, its default route through the server, which forwards), with an echo
        service on ``INNER_IP:INNER_PORT`` that tags its answers ``inner:``.
        """
        name = f"{self.prefix}-n"
        run(["ip", "netns", "add", name])
        self.namespaces["inner"] = name
        self.ns("inner", ["ip", "link", "set", "lo", "up"])
        self.ns("server", ["ip", "link", "add", "n0", "type", "veth", "peer", "name", "eth0"])
        self.ns("server", ["ip", "link", "set", "eth0", "netns", name])
        self.ns("server", ["ip", "addr", "add", f"{GATEWAY_INNER_IP}/24", "dev", "n0"])
        self.ns("server", ["ip", "link", "set", "n0", "up"])
        self.ns("server", ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        self.ns("inner", ["ip", "addr", "add", f"{INNER_IP}/24", "dev", "eth0"])
        self.ns("inner", ["ip", "link", "set", "eth0", "up"])
        self.ns("inner", ["ip", "route", "add", "default", "via", GATEWAY_INNER_IP])
        self.start_echo_service(INNER_IP, INNER_PORT, role="inner", tag="inner:")

    def start_echo_service(
        self, address: str = "127.0.0.1", port: int = SERVICE_PORT, role: str = "server",
        tag: str = "",
    ) -> None:
        """
        Start the echo service in ``role``'s namespace and wait until it listens.
        """
        process = self.start(
            role,
            [sys.executable, "-c", ECHO_SERVICE, address, str(port), tag],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        if process.stdout.readline().strip() != "listening":
            raise RuntimeError("the echo service did not start")

    def write_server_files(
        self,
        settings: Dict[str, str],
        users: Dict[str, str],
        run_as: Sequence[str] = (),
        sections: str = "",
    ) -> str:
        """
        Write the daemon's configuration (``settings`` over the lab's defaults, then the text
        ``sections``: ``[service NAME]`` and ``[group NAME]`` ones), make the server's identity
        (``sig2knockd --init``, run behind ``run_as``: the daemon's user) and write the users
        file; return the configuration's path.
        """
        config = {
            "UDP_PORT": str(CONTROL_PORT),
            "FORWARD_TO_IP": "127.0.0.1",
            "FORWARD_TO_PORT": str(SERVICE_PORT),
            "INTERFACE": "br0",
            "FIREWALL": "none",
            "USERS_FILE": "user.txt",
            "STATE_DIR": "state",
        }
        config.update(settings)
        path = os.path.join(self.directory, "sig2knockd.conf")
        with open(path, "w", encoding="utf-8") as config_file:
            config_file.write("".join(f"{key} = {value}\n" for key, value in config.items()))
            config_file.write(textwrap.dedent(sections))
        # The server's identity, made as an operator does (kept when it exists already).
        os.chmod(path, 0o644)
        identity = run([*run_as, os.path.join(self.server_bin, "sig2knockd"), "--init", "-c", path])
        self.server_key = identity.stdout.split()[0]
        users_path = os.path.join(self.directory, "user.txt")
        lines = []
        for user, password in users.items():
            lines.append(
                run(
                    [os.path.join(self.server_bin, "sig2knockd_useradd"), "--password-stdin",
                     "--kdf", CHEAP_KDF, "--allow-weak-kdf", "--server-key", self.server_key,
                     user],
                    input=password + "\n",
                ).stdout
            )
        with open(os.open(users_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write("".join(lines))
        return path

    def start_daemon(
        self,
        settings: Optional[Dict[str, str]] = None,
        users: Optional[Dict[str, str]] = None,
        sig2knockd: bool = False,
        prefix: Sequence[str] = (),
        arguments: Sequence[str] = (),
        sections: str = "",
    ) -> None:
        """
        Start the real daemon (``twistd -n sig2knock``, or with ``sig2knockd`` that command,
        behind ``prefix``, e.g. ``faketime``, with ``arguments`` after its own) in the server's
        namespace and wait until it logs that it is ready; ``sections`` as for
        ``write_server_files``.
        """
        config = self.write_server_files(
            settings or {}, users or {"alice": PASSWORD}, sections=sections
        )
        if sig2knockd:
            command = [os.path.join(self.server_bin, "sig2knockd"), "-c", config]
        else:
            command = [os.path.join(self.server_bin, "twistd"), "-n", "--pidfile=", "sig2knock",
                       "--config", config]
        command = [*prefix, *command, *arguments]
        self.daemon_log_start = len(self.log())
        log = open(self.daemon_log, "a", encoding="utf-8")
        self.daemon = self.start(
            "server",
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if "sig2knock ready" in self.log()[self.daemon_log_start :]:
                return
            if self.daemon.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the daemon did not start:\n{self.log()}")

    def daemon_command(self, *arguments: str) -> subprocess.CompletedProcess:
        """
        Run ``sig2knockd ARGUMENTS -c CONFIG`` in the server's namespace (``--flush``,
        ``--check-config``).
        """
        config = os.path.join(self.directory, "sig2knockd.conf")
        return self.ns(
            "server",
            [os.path.join(self.server_bin, "sig2knockd"), *arguments, "-c", config],
            check=False,
            timeout=60,
        )

    def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        """
        Send ``sig`` to the daemon and wait for it to end.
        """
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        self.daemon.wait(timeout=20)

    def hangup_and_wait(self, marker: str, timeout: float = 10) -> bool:
        """
        Send the daemon SIGHUP and wait until its log holds ``marker`` once more than before
        (``reloaded``, ``reload refused``); return whether it came within ``timeout`` seconds.
        """
        assert self.daemon is not None
        before = self.log().count(marker)
        self.daemon.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.log().count(marker) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.log().count(marker) > before

    def log(self) -> str:
        """
        What the daemon logged so far.
        """
        try:
            with open(self.daemon_log, encoding="utf-8") as log_file:
                return log_file.read()
        except FileNotFoundError:
            return ""

    def knock(
        self,
        role: str = "client",
        server: str = SERVER_IP,
        user: str = "alice",
        password: str = PASSWORD,
        extra: Sequence[str] = (),
        timeout: float = 5,
    ) -> subprocess.CompletedProcess:
        """
        Run the real client ``sig2knockc`` in ``role``'s namespace.
        """
        command = [
            os.path.join(self.client_bin, "sig2knockc"),
            server,
            str(CONTROL_PORT),
            "--user",
            user,
            "--password-stdin",
            "--kdf",
            CHEAP_KDF,
            "--server-key",
            self.server_key,
            "--timeout",
            str(timeout),
            *extra,
        ]
        return self.ns(role, command, check=False, input=password + "\n", timeout=timeout + 30)

    def probe(
        self,
        role: str,
        host: str,
        port: int,
        payload: str = "hello",
        hold: float = 0,
        timeout: float = 3,
    ) -> str:
        """
        Connect from ``role`` to ``host:port``, send ``payload``, and say what came back
        (``echo:...``, ``closed``, ``refused`` or ``timeout``: the SYN was dropped). With
        ``hold``, wait that long on the open connection and echo again.
        """
        result = self.ns(
            role,
            [sys.executable, "-c", PROBE, host, str(port), payload, str(hold), str(timeout)],
            check=False,
            timeout=hold + timeout + 30,
        )
        return result.stdout.strip() or f"error: {result.stderr.strip()}"

    def listening_ports(self) -> List[int]:
        """
        The TCP ports listening in the server's namespace.
        """
        output = self.ns("server", ["ss", "-Hltn"]).stdout
        ports = []
        for line in output.splitlines():
            fields = line.split()
            if len(fields) >= 4:
                ports.append(int(fields[3].rsplit(":", 1)[1]))
        return ports


_scratch_namespaces = itertools.count()


def scratch_namespace(test: Any, stem: str) -> str:
    """
    A network namespace of ``test``'s own (root only), deleted by a cleanup; the test is skipped
    when it cannot be made. Returns its name.
    """
    name = f"{stem}{os.getpid()}x{next(_scratch_namespaces)}"
    ip = find_tool("ip")
    created = subprocess.run(
        [ip, "netns", "add", name], capture_output=True, text=True, timeout=10
    )
    if created.returncode != 0:
        raise test.skipTest(f"cannot create a network namespace: {created.stderr.strip()}")
    test.addCleanup(
        subprocess.run, [ip, "netns", "delete", name], capture_output=True, timeout=10
    )
    return name


def nft_in(namespace: str, *arguments: str, stdin: str = "") -> subprocess.CompletedProcess:
    """
    The real nft run with ``arguments`` (and ``stdin``) inside ``namespace``.
    """
    return subprocess.run(
        [find_tool("ip"), "netns", "exec", namespace, find_tool("nft"), *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=10,
    )


def read_unit(path: str) -> configparser.RawConfigParser:
    """
    The unit file as sections of keys (systemd's syntax is close enough to INI for the keys
    checked here; a key given twice keeps its last value).
    """
    parser = configparser.RawConfigParser(strict=False, interpolation=None,
                                          comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    with open(path, encoding="utf-8") as unit:
        parser.read_file(unit)
    return parser
