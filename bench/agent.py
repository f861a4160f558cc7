"""
The benchmark's agent inside the client namespace: reads one JSON request per line on stdin,
answers one JSON line on stdout. Keeping one process in the namespace means no measurement pays
for ``ip netns exec`` or for starting the probe's interpreter; every tool's client command is
started the same way (``subprocess.Popen`` from here) and probed the same way (connect, send,
read the echo, from here). Two probes: ``fast`` abandons a connect whose SYN is unanswered after
5 ms and starts another (so a SYN that raced the firewall costs ~5 ms), ``plain`` is one blocking
connect (what ssh feels: such a SYN costs the kernel's ~1 s retransmission).
"""
import base64
import json
import socket
import struct
import subprocess
import sys
import threading
import time

from sig2knock.client import knocker as s2k_client

PAYLOAD = b"sig2knock-bench"


def echo(sock, deadline):
    """
    On a connected ``sock``: send the payload and read it back. Returns (result, t_connected,
    t_echo).
    """
    t_conn = time.time()
    sock.settimeout(max(0.5, deadline - time.monotonic()))
    sock.sendall(PAYLOAD)
    data = b""
    while len(data) < len(PAYLOAD):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return ("echo" if data == PAYLOAD else "closed"), t_conn, time.time()


def probe(host, port, timeout, source=None, attempt=0.005):
    """
    Connect, send, read the echo. A connect attempt whose SYN is not answered within ``attempt``
    seconds (the rule is not in place yet) is abandoned and a fresh one started, until
    ``timeout``: without this a SYN that races the firewall update costs the kernel's 1 s
    retransmission. Returns (result, t_connected, t_echo, attempts).
    """
    deadline = time.monotonic() + timeout
    attempts = 0
    while True:
        attempts += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if source:
                sock.bind((source, 0))
            sock.settimeout(attempt)
            try:
                sock.connect((host, port))
            except (socket.timeout, ConnectionRefusedError):
                sock.close()
                if time.monotonic() >= deadline:
                    return "timeout", None, None, attempts
                continue
            return echo(sock, deadline) + (attempts,)
        except socket.timeout:
            return "timeout", None, None, attempts
        except OSError as error:
            return f"error:{error}", None, None, attempts
        finally:
            sock.close()


def plain_probe(host, port, timeout):
    """
    One blocking connect, as ssh (or ``knock HOST ... && ssh HOST``) does: a SYN dropped because
    the rule is not in place yet waits for the kernel's retransmission (1 s, then 3 s ...).
    Then send and read the echo. Returns (result, t_connected, t_echo, attempts=1).
    """
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
        return echo(sock, deadline) + (1,)
    except socket.timeout:
        return "timeout", None, None, 1
    except ConnectionRefusedError:
        return "refused", None, None, 1
    except OSError as error:
        return f"error:{error}", None, None, 1
    finally:
        sock.close()


PROBES = {"fast": probe, "plain": plain_probe}


def do_access(req):
    t0 = time.time()
    proc = subprocess.Popen(req["argv"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=req.get("env"))
    try:
        out, err = proc.communicate(req.get("input", ""), timeout=req.get("client_timeout", 30))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    t_client = time.time()
    port = req.get("port")
    if port is None:
        try:
            port = int(out.split()[0])
        except (IndexError, ValueError):
            return {"result": "noport", "rc": proc.returncode, "stderr": err[-2000:], "t0": t0,
                    "t_client": t_client}
    probe_kind = PROBES[req.get("probe") or "fast"]
    result, t_conn, t_echo, attempts = probe_kind(req["host"], port, req.get("probe_timeout", 3))
    return {"result": result, "rc": proc.returncode, "t0": t0, "t_client": t_client,
            "t_conn": t_conn, "t_echo": t_echo, "port": port, "attempts": attempts,
            "stderr": err[-2000:]}


def bound_factory(address):
    def factory(family, kind):
        sock = socket.socket(family, kind)
        sock.bind((address, 0))
        return sock
    return factory


class DuplicatingKnocker(s2k_client.Knocker):
    """Every knock sent twice in a row (as a lossy or retrying network would)."""

    def _knock_tcp(self, port):
        super()._knock_tcp(port)
        super()._knock_tcp(port)


def do_dupknock(req):
    server = base64.b64decode(req["server_key"])
    key = s2k_client.user_key(req["password"], req["user"], req["kdf"], server)
    target = s2k_client.resolve(req["host"], req["control_port"])
    t0 = time.time()
    try:
        grant = DuplicatingKnocker(key, target, server, timeout=5).run()
    except s2k_client.ClientError as error:
        return {"result": "noport", "error": str(error)}
    result, _, t_echo, _ = probe(req["host"], grant.port, 3)
    return {"result": result, "rounds": grant.rounds, "t0": t0, "t_echo": t_echo}


def do_many(req):
    """N Knockers at once, each bound to its own address, each probing its grant."""
    target = s2k_client.resolve(req["host"], req["control_port"])
    server = base64.b64decode(req["server_key"])
    keys = [s2k_client.user_key(req["password"], user, req["kdf"], server) for user in req["users"]]
    results = [None] * len(keys)
    barrier = threading.Barrier(len(keys) + 1)

    def one(i):
        address = req["addresses"][i]
        barrier.wait()
        try:
            grant = s2k_client.Knocker(keys[i], target, server, timeout=req.get("timeout", 20),
                                       socket_factory=bound_factory(address)).run()
        except s2k_client.ClientError:
            results[i] = {"result": "noport", "t": time.time()}
            return
        result, _, t_echo, _ = probe(req["host"], grant.port, 5, source=address)
        results[i] = {"result": result, "rounds": grant.rounds, "t": t_echo or time.time()}

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(keys))]
    for thread in threads:
        thread.start()
    t0 = time.time()
    barrier.wait()
    for thread in threads:
        thread.join(req.get("timeout", 20) + 15)
    return {"t0": t0, "results": results}


def do_bulk(req):
    """Send for ``seconds`` on one connection, then read the sink's byte count."""
    sock = socket.create_connection((req["host"], req["port"]), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    block = memoryview(b"\0" * (1 << 20))
    start = time.monotonic()
    end = start + req["seconds"]
    while time.monotonic() < end:
        sock.sendall(block)
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(60)
    data = b""
    while len(data) < 8:
        chunk = sock.recv(8)
        if not chunk:
            break
        data += chunk
    elapsed = time.monotonic() - start
    sock.close()
    total = struct.unpack("!Q", data)[0] if len(data) == 8 else 0
    return {"bytes": total, "seconds": elapsed, "gbps": total * 8 / elapsed / 1e9}


def do_run(req):
    t0 = time.time()
    result = subprocess.run(req["argv"], capture_output=True, text=True, input=req.get("input", ""),
                            timeout=req.get("timeout", 60), env=req.get("env"))
    return {"rc": result.returncode, "stdout": result.stdout[-20000:],
            "stderr": result.stderr[-20000:], "t0": t0, "t1": time.time()}


HANDLERS = {"access": do_access, "dupknock": do_dupknock, "many": do_many, "bulk": do_bulk,
            "run": do_run}

print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    try:
        answer = HANDLERS[req["op"]](req)
    except Exception as error:  # reported to the driver, which decides
        answer = {"result": f"exception:{type(error).__name__}:{error}"}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
