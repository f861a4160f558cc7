"""
The client side of the exchange: send P1, knock, send P2, wait for P3 (docs/PROTOCOL.md §1).

Plain sockets only: no raw sockets, no root, and no Twisted (every login pays the client's start-up
time). The server only captures a source's knocks once it has processed that source's P1, so the
first knocks are often missed; the client therefore repeats the whole round (the same P1, the
knocks, a fresh P2) on a short doubling schedule until P3 arrives or the timeout passes. Repeats
are harmless: the server drops a P1 it has seen as a replay, ignores duplicate knocks and answers a
repeated P2 with the same P3. P1 is sealed once per exchange: its HPKE context gives the session's
keys (``sig2knock.protocol.wire``), which P2 and P3 are protected with.

Clock, sockets and randomness are injected so that the exchange can be tested deterministically.
Every import here is paid on every login: see ``docs/BENCHMARKS.md`` (client start-up) before
adding one.
"""

import ipaddress
import random
import socket
import time
from typing import Any, Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from sig2knock.protocol import addresses, keys, wire
from sig2knock.protocol.addresses import IPAddress, parse_address
from sig2knock.protocol.kdf import KdfParams, derive_key
from sig2knock.protocol.wire import Confirm, Grant, KnockRequest, MessageRejected, UserKey

# How far P3's timestamp may be from this clock. Generous on purpose: the server enforces its own
# MAX_CLOCK_SKEW on P1/P2, and P3 is already tied to this session's random id.
MAX_SKEW = 300.0
DEFAULT_KNOCKS = 4
DEFAULT_TIMEOUT = 10.0
# After the server's host first says its control port is closed (ICMP port unreachable), how
# long to go on knocking (a daemon being restarted) before saying that nothing listens there.
UNREACHABLE_GRACE = 1.0
KNOCK_PORT_MIN = 1024
KNOCK_PORT_MAX = 65535
_RECV_SIZE = 2048

SocketFactory = Callable[[int, int], Any]
Reporter = Callable[[str], None]


class ClientError(Exception):
    """
    The exchange failed; the message is one line for the user and never contains the password.
    """


def _quiet(line: str) -> None:
    """
    The default reporter: says nothing.
    """


class RetrySchedule(NamedTuple):
    """
    When to knock and how long to wait for P3 after each round: ``first``, doubling each round, at
    most ``cap``; and ``knock_pause``, the time between a round's P1 and its knocks.

    The server captures an address's knocks only once it has handled that address's P1 (about a
    millisecond in the namespace lab), so knocks sent right behind P1 pass unseen. The pause lets
    the first round complete on a server that is not busy; P1 and the knocks travel the same path,
    so the pause holds whatever the latency of the link. The short, doubling waits cover a slower
    or busy server: each round repeats P1, the knocks and P2. Extra rounds cost the server two
    messages each, and repeated knocks and P2s are harmless.
    """

    first: float = 0.002
    factor: float = 2.0
    cap: float = 1.0
    knock_pause: float = 0.0015

    def intervals(self) -> Iterator[float]:
        """
        The wait after round 1, 2, 3, ... (an endless iterator).
        """
        interval = self.first
        while True:
            yield min(interval, self.cap)
            interval = min(interval * self.factor, self.cap)


class Target(NamedTuple):
    """
    The server as resolved: socket family, numeric address, control port, socket address, and
    the name it was resolved from (for messages).
    """

    family: int
    address: str
    port: int
    sockaddr: Tuple[Any, ...]
    name: str = ""

    def __str__(self) -> str:
        if self.name and self.name != self.address:
            return f"{self.name} ({self.address}) port {self.port}"
        return f"{self.address} port {self.port}"

    def sockaddr_for(self, port: int) -> Tuple[Any, ...]:
        """
        The socket address of ``port`` on the server (keeps IPv6 flow info and scope).
        """
        return (self.sockaddr[0], port) + tuple(self.sockaddr[2:])


class GrantResult(NamedTuple):
    """
    A successful exchange: the assigned ``port`` on ``target``, open until ``deadline_ms`` for
    ``granted_address`` (the address the server saw; ``client_address`` is the one this client
    said it sends from, ``None`` when it could not tell), the session's ``door`` secret, and
    whether the port admits the connection only once it has shown that secret
    (``door_required``: P3 says so when P1 asked for it and the server forwards in proxy mode).
    """

    target: Target
    port: int
    deadline_ms: int
    session_id: bytes
    rounds: int
    granted_address: Optional[IPAddress] = None
    client_address: Optional[IPAddress] = None
    door: bytes = b""
    door_required: bool = False

    @property
    def relayed(self) -> bool:
        """
        Whether the server granted another public address than the one this client sends from:
        someone on the way re-sent this login from their own address.
        """
        claimed, granted = self.client_address, self.granted_address
        return (
            claimed is not None
            and granted is not None
            and claimed.is_global
            and granted != claimed
        )


def resolve(
    server: str, port: int, getaddrinfo: Callable[..., List[Any]] = socket.getaddrinfo
) -> Target:
    """
    Resolve ``server`` for UDP and take the first result (IPv4 or IPv6); raise ``ClientError``.
    An address without a zone (``%eth0``) is taken as it is: the first ``getaddrinfo`` of a
    process costs a few milliseconds even for an address.
    """
    literal = _address_literal(server, port)
    if literal is not None:
        return literal
    try:
        results = getaddrinfo(server, port, 0, socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as error:
        detail = getattr(error, "strerror", None) or str(error)
        raise ClientError(f"cannot resolve {server}: {detail}") from None
    if not results:
        raise ClientError(f"cannot resolve {server}: no address")
    family, _, _, _, sockaddr = results[0]
    return Target(family, str(sockaddr[0]), port, tuple(sockaddr), server)


def _address_literal(server: str, port: int) -> Optional[Target]:
    if "%" in server:
        return None  # a zone needs its interface index, which getaddrinfo looks up
    try:
        address = ipaddress.ip_address(server)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        return Target(socket.AF_INET6, str(address), port, (str(address), port, 0, 0), server)
    return Target(socket.AF_INET, str(address), port, (str(address), port), server)


def user_key(password: str, user: str, kdf: str, server: bytes) -> UserKey:
    """
    ``user``'s key at the server whose public key is ``server``, from ``password`` with the
    scrypt parameters ``kdf`` (``scrypt:n=..,r=..,p=..``).
    """
    seed = derive_key(password, user, server, KdfParams.parse(kdf))
    return UserKey(user, keys.private_from_seed(seed))


def choose_ports(rng: random.Random, count: int, control_port: int) -> Tuple[int, ...]:
    """
    ``count`` distinct random knock ports from 1024-65535, never the control port.
    """
    if not 1 <= count <= wire.MAX_KNOCKS:
        raise ValueError(f"a knock sequence has 1 to {wire.MAX_KNOCKS} ports, not {count}")
    # One extra draw, then drop the control port if it came up: the same distribution as sampling
    # from the range without it, without building a list of 64,000 ports at every login.
    ports = [
        port
        for port in rng.sample(range(KNOCK_PORT_MIN, KNOCK_PORT_MAX + 1), count + 1)
        if port != control_port
    ]
    return tuple(ports[:count])


class Knocker:
    """
    One exchange with one server (``server``: its public key's 32 bytes): rounds of P1, knocks
    and P2 until a P3 for this session arrives.

    ``clock`` gives the time for message timestamps and for checking P3, ``monotonic`` measures the
    timeout and the retry intervals, ``sleep`` makes the pause between P1 and the knocks,
    ``socket_factory(family, type)`` makes the sockets, ``rng`` chooses the knock ports and
    ``new_session_id`` the session id. Tests replace them all. With ``send_address`` (the
    default) P1 names the address this host sends from; with ``door`` P1 says that this client
    will connect to the assigned port itself and show the door secret there (``--stdio``);
    ``service`` names the hidden service asked for (``""``: the server's default one).
    """

    def __init__(
        self,
        user: UserKey,
        target: Target,
        server: bytes,
        *,
        protocol: int = addresses.PROTO_TCP,
        knocks: int = DEFAULT_KNOCKS,
        timeout: float = DEFAULT_TIMEOUT,
        schedule: RetrySchedule = RetrySchedule(),
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        socket_factory: SocketFactory = socket.socket,
        rng: Optional[random.Random] = None,
        new_session_id: Callable[[], bytes] = wire.new_session_id,
        report: Reporter = _quiet,
        send_address: bool = True,
        door: bool = False,
        service: str = "",
    ) -> None:
        if protocol not in addresses.PROTOCOL_NAMES:
            raise ValueError(f"knock protocol {protocol!r} is neither TCP nor UDP")
        self.user = user
        self.target = target
        self.server = keys.import_public_key(server)
        self.protocol = protocol
        self.timeout = timeout
        self.schedule = schedule
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        self.socket_factory = socket_factory
        self.rng = rng if rng is not None else random.SystemRandom()
        self.session_id = new_session_id()
        self.ports = choose_ports(self.rng, knocks, target.port)
        self.report = report
        self.send_address = send_address
        self.door = door
        self.service = service
        self._unreachable_since: Optional[float] = None

    def run(self) -> GrantResult:
        """
        Knock until granted; raise ``ClientError`` when no P3 came within the timeout.
        """
        deadline = self.monotonic() + self.timeout
        control = self.socket_factory(self.target.family, socket.SOCK_DGRAM)
        knocker = None
        try:
            # Connected, so that the kernel reports the host's ICMP port unreachable to this
            # socket (a daemon that is down), only the server's answers reach it, and its
            # local address is the one this host sends to the server from.
            local_address = self._connect(control)
            self.client_address = local_address if self.send_address else None
            request = KnockRequest(
                self.session_id,
                wire.now_ms(self.clock()),
                self.protocol,
                self.ports,
                self.client_address,
                door=self.door,
                service=self.service,
            )
            self.request, self.keys = wire.seal_request(request, self.user, self.server)
            if self.protocol == addresses.PROTO_UDP:
                knocker = self.socket_factory(self.target.family, socket.SOCK_DGRAM)
            rounds = 0
            for interval in self.schedule.intervals():
                if self.monotonic() >= deadline:
                    break
                rounds += 1
                self._round(control, knocker, rounds)
                grant = self._await_grant(control, min(self.monotonic() + interval, deadline))
                if grant is None and self._unreachable_since is not None:
                    if self.monotonic() - self._unreachable_since >= UNREACHABLE_GRACE:
                        raise self._nothing_listens()
                if grant is not None:
                    deadline_s = grant.deadline_ms / 1000
                    self.report(
                        f"P3 received: port {grant.port}, deadline"
                        f" {time.strftime('%H:%M:%S', time.localtime(deadline_s))}"
                        f" (in {deadline_s - self.clock():.1f} s; round {rounds})"
                    )
                    return GrantResult(
                        self.target,
                        grant.port,
                        grant.deadline_ms,
                        self.session_id,
                        rounds,
                        grant.address,
                        self.client_address,
                        self.keys.door,
                        grant.door_required,
                    )
        finally:
            control.close()
            if knocker is not None:
                knocker.close()
        if self._unreachable_since is not None:
            raise self._nothing_listens()
        raise ClientError(
            f"no answer from {self.target} within {self.timeout:g} s. Most likely first: a"
            " wrong user, password, key or --server-key; a --kdf other than the users file's"
            " (the invitation's); --knock-proto or --knocks not matching the server's"
            " KNOCK_PROTO or KNOCK_COUNT; a knock port filtered on the way; this clock more than"
            " MAX_CLOCK_SKEW (60 s by default) from the server's (see --time-offset); the server"
            " down behind a firewall that drops its control port"
        )

    def _connect(self, control: Any) -> Optional[IPAddress]:
        """
        Connect the control socket to the server (a UDP connect sends nothing) and return the
        address this host sends to it from, as it sees it (a private one behind NAT), or
        ``None`` when it cannot tell; unconnected, the socket sends with ``sendto`` all the same
        (a timeout then tells what an ICMP error would have).
        """
        try:
            control.connect(self.target.sockaddr)
            return parse_address(str(control.getsockname()[0]))
        except OSError:
            return None

    def _round(self, control: Any, knocker: Any, number: int) -> None:
        """
        Send P1 (the same each round), the knocks and a fresh P2.
        """
        self._send_control(control, self.request)
        self.report(f"round {number}: P1 sent to {self.target}")
        self.sleep(self.schedule.knock_pause)
        for port in self.ports:
            if knocker is None:
                self._knock_tcp(port)
            else:
                self._knock_udp(knocker, port)
        self.report(
            f"round {number}: knocked {addresses.PROTOCOL_NAMES[self.protocol]}"
            f" {' '.join(map(str, self.ports))}"
        )
        confirm = Confirm(self.session_id, wire.now_ms(self.clock()))
        self._send_control(control, wire.encode_confirm(confirm, self.keys))
        self.report(f"round {number}: P2 sent")

    def _send_control(self, control: Any, data: bytes) -> None:
        try:
            control.sendto(data, self.target.sockaddr)
        except (ConnectionRefusedError, ConnectionResetError):
            self._port_unreachable()  # an ICMP error about an earlier datagram, reported here
        except OSError:
            pass  # the next round tries again

    def _nothing_listens(self) -> ClientError:
        return ClientError(
            f"nothing listens at {self.target}: its host answered that the UDP port is closed"
            " (ICMP port unreachable); sig2knockd is not running there, or its UDP_PORT is"
            " another port"
        )

    def _port_unreachable(self) -> None:
        if self._unreachable_since is None:
            self._unreachable_since = self.monotonic()
            self.report(f"{self.target}: the host says the control port is closed")

    def _knock_tcp(self, port: int) -> None:
        """
        One SYN: a non-blocking connect (Linux sends the SYN inside it), closed at once so the
        kernel never retransmits it.
        """
        sock = self.socket_factory(self.target.family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.connect_ex(self.target.sockaddr_for(port))
        except OSError:
            pass
        finally:
            sock.close()

    def _knock_udp(self, knocker: Any, port: int) -> None:
        """
        One datagram of one random byte.
        """
        try:
            knocker.sendto(bytes([self.rng.getrandbits(8)]), self.target.sockaddr_for(port))
        except OSError:
            pass

    def _await_grant(self, control: Any, until: float) -> Optional[Grant]:
        """
        The P3 of this session if one arrives from the server before ``until``, else ``None``.
        """
        while True:
            remaining = until - self.monotonic()
            if remaining <= 0:
                return None
            control.settimeout(remaining)
            try:
                data, source = control.recvfrom(_RECV_SIZE)
            except socket.timeout:
                return None
            except (ConnectionRefusedError, ConnectionResetError):
                # On Windows ConnectionResetError (WSAECONNRESET, the seed's "recv() failed"):
                # an ICMP error about an earlier datagram, reported here once. The socket still
                # holds what came after it, P3 included.
                self._port_unreachable()
                continue
            except OSError:
                continue
            grant = self._grant_from(data, source)
            if grant is not None:
                return grant

    def _grant_from(self, data: bytes, source: Sequence[Any]) -> Optional[Grant]:
        try:
            if (parse_address(str(source[0])), int(source[1])) != (
                parse_address(self.target.address),
                self.target.port,
            ):
                return None
        except (ValueError, TypeError, IndexError):
            return None
        try:
            grant = wire.decode_grant(data, self.keys, now=self.clock(), max_skew=MAX_SKEW)
        except MessageRejected:
            return None
        if grant.session_id != self.session_id:
            return None
        return grant


def knock(
    server: str,
    port: int,
    user: UserKey,
    server_key: bytes,
    *,
    send_address: bool = True,
    door: bool = False,
    service: str = "",
    protocol: int = addresses.PROTO_TCP,
    knocks: int = DEFAULT_KNOCKS,
    timeout: float = DEFAULT_TIMEOUT,
    time_offset: float = 0.0,
    report: Reporter = _quiet,
) -> GrantResult:
    """
    Resolve ``server`` and run one exchange with its control ``port`` (``server_key``: the
    server's public key; ``send_address``: whether P1 names this host's address; ``door``:
    whether this client will connect itself and show the door secret; ``service``: the hidden
    service asked for, ``""`` for the default one; ``time_offset``: seconds added to this
    host's clock for the messages' timestamps, for a clock that cannot be fixed); raise
    ``ClientError``.
    """
    target = resolve(server, port)
    knocker = Knocker(
        user,
        target,
        server_key,
        send_address=send_address,
        door=door,
        service=service,
        protocol=protocol,
        knocks=knocks,
        timeout=timeout,
        clock=(lambda: time.time() + time_offset) if time_offset else time.time,
        report=report,
    )
    return knocker.run()
