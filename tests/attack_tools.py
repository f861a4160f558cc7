"""
Attack tools for ``tests/test_attacks.py``: small programs run inside the lab's namespaces
(``python -m tests.attack_tools COMMAND JSON``); ``tests/attack_driver.py`` runs them for the
tests.

Every tool is bounded in packets and in time, and sends only to the addresses it is given, which
the tests take from the lab (198.18.0.0/15). The tools print ``ready`` once they are listening or
about to send, and one line of JSON with what they did when they end.

- ``capture``: pcap on an interface with a BPF filter; writes each IPv4 UDP packet (addresses,
  ports, payload in hex) as one JSON line to a file, until SIGTERM or its time is up.
- ``rawsend``: sends IPv4 UDP datagrams with any source address and port, through a raw socket
  with ``IP_HDRINCL`` (the IPv4 and UDP headers and checksums are built here).
- ``listen``: UDP sockets bound to given ports; counts what arrives within a time.
- ``sendwait``: sends datagrams from a bound UDP socket and counts any answer.
- ``noise``: TCP SYNs (non-blocking connects closed at once) and UDP datagrams to random ports.
- ``flood``: datagrams to the control port from many bound source addresses: random junk,
  junk shaped like a message, captured or made messages with one bit flipped, and freshly made
  valid P1s under given keys; drains its sockets to count any answer.
"""

import json
import random
import select
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

from tests import lab as lab_module


# -- packet building ----------------------------------------------------------------------------


def paced(count: int, seconds: float, pace: float, started: float):
    """
    The numbers 0 .. count-1, spread evenly over ``pace`` seconds when ``pace`` is set, and
    stopping once ``seconds`` have passed since ``started`` (every attack loop is bounded).
    """
    for number in range(count):
        elapsed = time.monotonic() - started
        if elapsed >= seconds:
            return
        if pace:
            ahead = number * pace / count - elapsed
            if ahead > 0.002:
                time.sleep(ahead)
        yield number

def checksum(data: bytes) -> int:
    """
    The Internet checksum (RFC 1071) of ``data``.
    """
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_udp_packet(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """
    A whole IPv4 packet carrying one UDP datagram, with both checksums.
    """
    source, destination = socket.inet_aton(src), socket.inet_aton(dst)
    udp_length = 8 + len(payload)
    pseudo = source + destination + struct.pack("!BBH", 0, socket.IPPROTO_UDP, udp_length)
    udp_sum = checksum(pseudo + struct.pack("!HHHH", sport, dport, udp_length, 0) + payload)
    udp = struct.pack("!HHHH", sport, dport, udp_length, udp_sum or 0xFFFF) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + len(udp), random.getrandbits(16), 0x4000, 64, socket.IPPROTO_UDP, 0,
        source, destination,
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + udp


def parse_ethernet_udp(frame: bytes) -> Optional[Dict[str, Any]]:
    """
    The addresses, ports and payload of an Ethernet frame carrying IPv4 UDP, else ``None``.
    """
    if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_UDP or len(ip) < ihl + 8:
        return None
    total = struct.unpack("!H", ip[2:4])[0]
    sport, dport, length = struct.unpack("!HHH", ip[ihl : ihl + 6])
    payload = ip[ihl + 8 : min(total, ihl + length)]
    return {
        "src": socket.inet_ntoa(ip[12:16]),
        "dst": socket.inet_ntoa(ip[16:20]),
        "sport": sport,
        "dport": dport,
        "payload": payload.hex(),
    }


def flip_random_bit(data: bytes, rng: random.Random) -> bytes:
    """
    ``data`` with one random bit inverted.
    """
    flipped = bytearray(data)
    bit = rng.randrange(len(flipped) * 8)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


def make_p1(name: str, seed: bytes, server_key: str, *, timestamp: Optional[float] = None,
            protocol: int = 6, knocks: int = 4, rng: Optional[random.Random] = None,
            client_address: Optional[str] = None) -> bytes:
    """
    A valid P1 of user ``name`` (whose key's secret is ``seed``) for the server whose public key
    is ``server_key`` (text): fresh session id, random knock ports, stamped ``timestamp`` (default
    now).
    """
    return sealed_p1(name, seed, server_key, timestamp=timestamp, protocol=protocol,
                     knocks=knocks, rng=rng, client_address=client_address)[0]


def sealed_p1(name: str, seed: bytes, server_key: str, *, timestamp: Optional[float] = None,
              protocol: int = 6, knocks: int = 4, rng: Optional[random.Random] = None,
              client_address: Optional[str] = None) -> Any:
    """
    ``make_p1``'s P1 with its request and session keys: ``(datagram, request, keys)``.
    """
    import ipaddress

    from sig2knock.protocol import keys, wire

    rng = rng or random.SystemRandom()
    ports = tuple(rng.sample(range(2000, 29000), knocks))
    request = wire.KnockRequest(
        wire.new_session_id(),
        wire.now_ms(time.time() if timestamp is None else timestamp),
        protocol,
        ports,
        None if client_address is None else ipaddress.ip_address(client_address),
    )
    server = keys.import_public_key(keys.parse_public_key(server_key))
    data, session_keys = wire.seal_request(
        request, wire.UserKey(name, keys.private_from_seed(seed)), server
    )
    return data, request, session_keys


def make_p2(name: str, seed: bytes, server_key: str) -> bytes:
    """
    A valid P2 of user ``name`` (for a session whose P1 the server never saw).
    """
    from sig2knock.protocol import wire

    _, request, session_keys = sealed_p1(name, seed, server_key)
    confirm = wire.Confirm(request.session_id, wire.now_ms(time.time()))
    return wire.encode_confirm(confirm, session_keys)


def lab_key(user: str, password: str, server_key: str) -> bytes:
    """
    The secret of ``user``'s key at the server ``server_key`` (text), as the lab's users file has
    it (the lab's cheap scrypt parameters).
    """
    from sig2knock.protocol.kdf import KdfParams, derive_key
    from sig2knock.protocol.keys import parse_public_key

    return derive_key(
        password, user, parse_public_key(server_key), KdfParams.parse(lab_module.CHEAP_KDF)
    )


# -- the tools, run inside a namespace ----------------------------------------------------------


def _emit(result: Dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def tool_capture(args: Dict[str, Any]) -> None:
    import pcapy

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    handle = pcapy.create(args["interface"])
    handle.set_snaplen(2048)
    handle.set_promisc(0)
    handle.set_timeout(1)
    handle.set_buffer_size(8 << 20)
    handle.activate()
    handle.setfilter(args["filter"])
    handle.setnonblock(1)
    fd = handle.getfd()
    deadline = time.monotonic() + float(args["seconds"])
    limit = int(args.get("max", 100000))
    count = 0
    with open(args["out"], "w", encoding="utf-8") as out:

        def packet(header: Any, data: bytes) -> None:
            nonlocal count
            parsed = parse_ethernet_udp(bytes(data))
            if parsed is not None and count < limit:
                count += 1
                out.write(json.dumps(parsed) + "\n")

        print("ready", flush=True)
        while not stop.is_set() and time.monotonic() < deadline and count < limit:
            select.select([fd], [], [], 0.05)
            handle.dispatch(-1, packet)
            out.flush()
        handle.dispatch(-1, packet)
    _emit({"captured": count})


def tool_rawsend(args: Dict[str, Any]) -> None:
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    sent = 0
    interval = float(args.get("interval", 0.0))
    for item in args["packets"][:10000]:
        packet = ipv4_udp_packet(
            item["src"], int(item["sport"]), item["dst"], int(item["dport"]),
            bytes.fromhex(item["payload"]),
        )
        raw.sendto(packet, (item["dst"], 0))
        sent += 1
        if interval:
            time.sleep(interval)
    raw.close()
    _emit({"sent": sent})


def tool_listen(args: Dict[str, Any]) -> None:
    sockets = []
    for port in args["ports"]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args["address"], int(port)))
        sock.setblocking(False)
        sockets.append(sock)
    print("ready", flush=True)
    received: List[Dict[str, Any]] = []
    deadline = time.monotonic() + min(float(args["seconds"]), 30.0)
    while time.monotonic() < deadline:
        readable, _, _ = select.select(sockets, [], [], max(0.0, deadline - time.monotonic()))
        for sock in readable:
            try:
                data, source = sock.recvfrom(65536)
            except OSError:
                continue
            received.append({"from": list(source), "to": sock.getsockname()[1], "size": len(data)})
    _emit({"received": received})


def tool_sendwait(args: Dict[str, Any]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(tuple(args.get("source", ("0.0.0.0", 0))))
    target = (args["target"][0], int(args["target"][1]))
    for payload in args["payloads"][:1000]:
        sock.sendto(bytes.fromhex(payload), target)
    answers = 0
    deadline = time.monotonic() + min(float(args.get("wait", 1.0)), 10.0)
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if readable:
            try:
                sock.recvfrom(65536)
                answers += 1
            except OSError:
                pass
    _emit({"answers": answers, "sent": len(args["payloads"][:1000])})


def tool_noise(args: Dict[str, Any]) -> None:
    target = args["target"]
    count = min(int(args["count"]), 20000)
    seconds = min(float(args["seconds"]), 10.0)
    pace = float(args.get("pace", 0.0))  # spread ``count`` over this many seconds; 0: flat out
    protocols = args.get("protocols", ["tcp", "udp"])
    exclude = set(args.get("exclude", []))
    for low, high in args.get("exclude_ranges", []):
        exclude.update(range(int(low), int(high) + 1))
    rng = random.Random(args.get("seed"))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = {"tcp": 0, "udp": 0}
    print("ready", flush=True)
    started = time.monotonic()
    for number in paced(count, seconds, pace, started):
        port = rng.randrange(1, 65536)
        while port in exclude:
            port = rng.randrange(1, 65536)
        protocol = protocols[number % len(protocols)]
        try:
            if protocol == "tcp":
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.connect_ex((target, port))
                sock.close()
            else:
                udp.sendto(rng.randbytes(rng.randrange(1, 64)), (target, port))
        except OSError:
            continue
        sent[protocol] += 1
    _emit({"sent": sent["tcp"] + sent["udp"], "tcp": sent["tcp"], "udp": sent["udp"],
           "elapsed": round(time.monotonic() - started, 3)})


def tool_flood(args: Dict[str, Any]) -> None:
    from sig2knock.protocol import wire

    target = (args["target"][0], int(args["target"][1]))
    count = min(int(args["count"]), 100000)
    seconds = min(float(args["seconds"]), 20.0)
    pace = float(args.get("pace", 0.0))  # spread ``count`` over this many seconds; 0: flat out
    rng = random.Random(args.get("seed"))
    templates = [bytes.fromhex(t) for t in args.get("templates", [])]
    keys = [(k["name"], bytes.fromhex(k["key"])) for k in args.get("keys", [])]
    kinds, weights = zip(*sorted(args["mix"].items()))
    server_key = args.get("server_key", "")
    sockets = []
    for address in args["sources"]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((address, 0))
        sock.setblocking(False)
        sockets.append(sock)
    by_kind = {kind: 0 for kind in kinds}
    answered: List[Any] = []
    errors = 0

    def drain() -> None:
        for sock in sockets:
            while True:
                try:
                    data, source = sock.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                answered.append([source[0], source[1], len(data)])

    print("ready", flush=True)
    started = time.monotonic()
    sent = 0
    for number in paced(count, seconds, pace, started):
        kind = rng.choices(kinds, weights)[0]
        if kind == "junk":
            data = rng.randbytes(rng.randrange(0, 300))
        elif kind == "shaped":
            # The right version, type and size, random after: past the cheap checks.
            message_type = rng.choice((1, 2))
            size = wire.MIN_KNOCK_REQUEST_SIZE + 6 if message_type == 1 else wire.CONFIRM_SIZE
            data = bytes([wire.VERSION, message_type]) + rng.randbytes(size - 2)
        elif kind == "flip":
            data = flip_random_bit(rng.choice(templates), rng)
        elif kind == "flip_request":
            # A bit of the request's seal: the message passes the cheap checks and the name's
            # seal, and costs its receiver the whole opening.
            template = bytearray(rng.choice(templates))
            template[rng.randrange(wire.REQUEST_OFFSET, len(template))] ^= 1 << rng.randrange(8)
            data = bytes(template)
        elif kind == "p1":
            name, key = rng.choice(keys)
            data = make_p1(name, key, server_key, rng=rng)
        else:
            raise ValueError(kind)
        sock = sockets[number % len(sockets)]
        try:
            sock.sendto(data, target)
        except BlockingIOError:
            select.select([], [sock], [], 0.05)
            errors += 1
            continue
        except OSError:
            errors += 1
            continue
        sent += 1
        by_kind[kind] += 1
        if number % 128 == 0:
            drain()
    elapsed = time.monotonic() - started
    time.sleep(min(float(args.get("linger", 0.5)), 5.0))
    drain()
    _emit({"sent": sent, "by_kind": by_kind, "answered": answered, "errors": errors,
           "elapsed": round(elapsed, 3),
           "sources": [list(sock.getsockname()) for sock in sockets]})


TOOLS = {
    "capture": tool_capture,
    "rawsend": tool_rawsend,
    "listen": tool_listen,
    "sendwait": tool_sendwait,
    "noise": tool_noise,
    "flood": tool_flood,
}


def main(argv: Sequence[str]) -> None:
    name, arguments = argv[0], json.loads(argv[1])
    TOOLS[name](arguments)


if __name__ == "__main__":
    main(sys.argv[1:])
