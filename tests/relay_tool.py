"""
An on-path relay, run in the router namespace of ``tests/test_relay.py``: it sees every packet the
client sends to the server, sends a copy of each from its own address at once, holds the original
back for ``delay`` seconds before letting it go on (the router's forwarding drops them; this
program re-sends them as they were, source address and all), and once the server has answered its
copies, scans ``scan`` (the assigned range) from its own address for a port that lets it in.

    python -m tests.relay_tool JSON

It prints ``ready``, then one JSON line: what it copied, held and found. It only ever sends to the
lab's server address, and stops after ``seconds``.
"""

import json
import select
import socket
import sys
import time
from typing import Any, Dict, List, Tuple

SYN, ACK = 0x02, 0x10


def with_checksums(ip: bytes) -> bytes:
    """
    ``ip`` (an IPv4 packet carrying TCP or UDP, as captured) with its transport checksum made
    again: a veth leaves it to be completed by the sender's offload, so the captured one may not
    be valid when the packet is sent again.
    """
    from tests.attack_tools import checksum

    ihl = (ip[0] & 0x0F) * 4
    total = int.from_bytes(ip[2:4], "big")
    protocol = ip[9]
    segment = bytearray(ip[ihl:total])
    offset = 16 if protocol == socket.IPPROTO_TCP else 6
    segment[offset : offset + 2] = b"\0\0"
    pseudo = ip[12:20] + bytes([0, protocol]) + len(segment).to_bytes(2, "big")
    value = checksum(pseudo + bytes(segment)) or (0xFFFF if protocol == socket.IPPROTO_UDP else 0)
    segment[offset : offset + 2] = value.to_bytes(2, "big")
    return ip[:ihl] + bytes(segment)


def main(args: Dict[str, Any]) -> None:
    import pcapy

    server, relay, client = args["server"], args["relay"], args["client"]
    control_port = int(args["control_port"])
    low, high = args["scan"]
    handle = pcapy.create(args["interface"])
    handle.set_snaplen(2048)
    handle.set_promisc(0)
    handle.set_timeout(1)
    handle.activate()
    handle.setfilter(f"ip and src host {client} and dst host {server}")
    handle.setnonblock(1)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    control = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    control.bind((relay, 0))
    control.setblocking(False)
    knocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    knocker.bind((relay, 0))
    held: List[Tuple[float, bytes]] = []
    copied = {"control": 0, "tcp": 0, "udp": 0}
    answers = 0
    found: List[Dict[str, Any]] = []
    scanned = False

    def packet(header: Any, frame: bytes) -> None:
        ip = bytes(frame)[14:]
        ihl = (ip[0] & 0x0F) * 4
        protocol, port = ip[9], int.from_bytes(ip[ihl + 2 : ihl + 4], "big")
        if protocol == socket.IPPROTO_TCP:
            flags = ip[ihl + 13]
            if not flags & SYN or flags & ACK:
                return  # the router forwards the rest of a connection itself
            copied["tcp"] += 1
            syn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            syn.bind((relay, 0))
            syn.setblocking(False)
            syn.connect_ex((server, port))
            syn.close()
        elif protocol == socket.IPPROTO_UDP:
            payload = ip[ihl + 8 :]
            if port == control_port:
                copied["control"] += 1
                control.sendto(payload, (server, control_port))
            else:
                copied["udp"] += 1
                knocker.sendto(payload, (server, port))
        else:
            return
        held.append((time.monotonic() + float(args["delay"]), with_checksums(ip)))

    print("ready", flush=True)
    started = time.monotonic()
    deadline = started + float(args["seconds"])
    while time.monotonic() < deadline:
        select.select([handle.getfd(), control], [], [], 0.005)
        handle.dispatch(-1, packet)
        try:
            while control.recvfrom(2048):
                answers += 1
        except (BlockingIOError, OSError):
            pass
        now = time.monotonic()
        while held and held[0][0] <= now:
            raw.sendto(held.pop(0)[1], (server, 0))
        # Scan once the server answered a copy, or after ``scan_after`` seconds anyway.
        if not scanned and (answers or now > started + float(args.get("scan_after", 1.0))):
            scanned = True
            found = scan(relay, server, range(low, high + 1), args.get("probe", "relayed"))
    for _, original in held:
        raw.sendto(original, (server, 0))
    print(json.dumps({"copied": copied, "answers_to_relay": answers, "scanned": scanned,
                      "found": found}), flush=True)


def scan(relay: str, server: str, ports: range, probe: str) -> List[Dict[str, Any]]:
    """
    Try every port of ``ports`` from ``relay`` at once; for each that accepts, send ``probe``
    and say what came back.
    """
    pending = {}
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((relay, 0))
        sock.setblocking(False)
        sock.connect_ex((server, port))
        pending[sock] = port
    found = []
    deadline = time.monotonic() + 1.5
    while pending and time.monotonic() < deadline:
        _, writable, _ = select.select([], list(pending), [], 0.05)
        for sock in writable:
            port = pending.pop(sock)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                found.append({"port": port, "reply": exchange(sock, probe)})
            sock.close()
    for sock in pending:
        sock.close()
    return found


def exchange(sock: socket.socket, probe: str) -> str:
    sock.setblocking(True)
    sock.settimeout(1.0)
    try:
        sock.sendall(probe.encode())
        return sock.recv(100).decode(errors="replace") or "closed"
    except OSError as error:
        return f"error: {error}"


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
