"""
Using a grant: a TCP connection to the assigned port, and the relay of ``sig2knockc --stdio``
between it and standard input and output (ssh's ProxyCommand). Twisted-free, for the client.
"""

import os
import socket
from typing import List

from sig2knock.client import portable
from sig2knock.client.knocker import DEFAULT_TIMEOUT, ClientError, GrantResult


def connect(result: GrantResult, timeout: float = DEFAULT_TIMEOUT) -> socket.socket:
    """
    A TCP connection to the assigned port, past its door (the session's secret, sent first when
    P3 asked for it); raise ``ClientError``.
    """
    sock = socket.socket(result.target.family, socket.SOCK_STREAM)
    try:
        # ssh's small writes must not wait for the previous one's ACK (Nagle's algorithm).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        sock.connect(result.target.sockaddr_for(result.port))
        if result.door_required:
            sock.sendall(result.door)
        sock.settimeout(None)
    except OSError as error:
        sock.close()
        raise ClientError(
            f"cannot connect to {result.target.address} port {result.port}:"
            f" {error.strerror or error}"
        ) from None
    return sock


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def relay(sock: socket.socket, input_fd: int = 0, output_fd: int = 1) -> int:
    """
    Copy ``input_fd`` to ``sock`` and ``sock`` to ``output_fd`` until the socket closes; at EOF on
    the input, half-close the socket so the peer sees it. Returns the number of bytes that came
    back (0: the service sent nothing, as when the server could not reach it).

    The input is read by a thread of its own rather than waited on with ``select``: Windows can
    wait on sockets only, not on pipes or consoles. ``OSError`` of either side passes through
    (one of the input ends the relay: the socket is shut down both ways).
    """
    import threading  # only --stdio needs it

    portable.binary_stdio(input_fd, output_fd)
    failed: List[OSError] = []
    feeder = threading.Thread(target=_feed, args=(input_fd, sock, failed), daemon=True)
    feeder.start()
    received = 0
    while True:
        data = sock.recv(65536)
        if not data:
            break
        received += len(data)
        _write_all(output_fd, data)
    if failed:
        raise failed[0]
    return received


def _feed(input_fd: int, sock: socket.socket, failed: List[OSError]) -> None:
    """
    Send what ``input_fd`` gives to ``sock``; at its end, shut the socket's sending side. When
    the input cannot be read, keep the error in ``failed`` and shut the socket down both ways,
    so that the relay ends instead of waiting for an answer to input that never came. (When the
    socket fails, the relay's own receive sees it.)
    """
    how = socket.SHUT_WR
    try:
        while True:
            try:
                data = os.read(input_fd, 65536)
            except OSError as error:
                failed.append(error)
                how = socket.SHUT_RDWR
                break
            if not data:
                break
            sock.sendall(data)
        sock.shutdown(how)
    except OSError:
        pass  # the socket closed under us: the relay is over
