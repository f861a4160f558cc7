"""
A tiny sig2knock server on 127.0.0.1 for the client's tests: real sockets, the real message
format, knocks seen on UDP ports it owns. Nothing leaves the loopback interface.
"""

import socket
import threading
import time
from typing import List

from sig2knock.protocol.wire import KnockRequest, MessageRejected
from sig2knock.test.common import FakeServer, grant_bytes


class LoopbackServer:
    """
    A tiny sig2knock server on 127.0.0.1 in a thread, with the tests' server identity: it opens
    P1/P2 as the daemon does (``FakeServer``),
    watches UDP knock ports it owns, and answers a P2 with P3 once P1 and every knock of its
    session have arrived. Like the daemon in proxy mode, its P3 requires the door secret when
    the P1 offered it; ``doors`` holds the secret of each such grant.
    """

    def __init__(self, grant_port: int, knock_ports: int = 0, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.control = socket.socket(family, socket.SOCK_DGRAM)
        self.control.bind((host, 0))
        self.port = self.control.getsockname()[1]
        self.server = FakeServer()
        self.grant_port = grant_port
        self.knock_sockets = []
        for _ in range(knock_ports):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind((host, 0))
            sock.setblocking(False)
            self.knock_sockets.append(sock)
        self.knock_ports = [sock.getsockname()[1] for sock in self.knock_sockets]
        self.seen_knocks: List[int] = []
        self.requests: List[KnockRequest] = []
        self.grants = 0
        self.doors: List[bytes] = []
        self.errors: List[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.control.close()
        for sock in self.knock_sockets:
            sock.close()

    def _serve(self) -> None:
        self.control.settimeout(0.01)
        while not self.stopping.is_set():
            for sock in self.knock_sockets:
                try:
                    sock.recvfrom(16)
                except BlockingIOError:
                    continue
                self.seen_knocks.append(sock.getsockname()[1])
            try:
                data, source = self.control.recvfrom(2048)
            except socket.timeout:
                continue
            try:
                received = self.server.decode(data, time.time())
            except MessageRejected as error:
                self.errors.append(str(error))
                continue
            message = received.message
            if isinstance(message, KnockRequest):
                self.requests.append(message)
                continue
            asked = [request for request in self.requests
                     if request.session_id == message.session_id]
            if not asked:
                continue
            if self.knock_sockets and set(self.seen_knocks) != set(self.knock_ports):
                continue
            self.grants += 1
            door = asked[0].door
            if door:
                self.doors.append(received.keys.door)
            self.control.sendto(
                grant_bytes(message.session_id, time.time(), received.keys, self.grant_port,
                            door_required=door),
                source,
            )
