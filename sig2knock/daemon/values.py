"""
The value types of ``sig2knockd.conf``: each is a callable that parses one value's text,
raising ``BadValue`` with what was expected. Those with a range say it in ``accepts`` (such as
``1-86400``), for the documentation.
"""

import ipaddress
import re
from typing import Any, Callable, Tuple

from sig2knock.protocol.addresses import IPAddress, unmapped

_INTERFACE_RE = re.compile(r"[^\s/:]{1,15}")


class BadValue(ValueError):
    """
    A value does not parse; the message says what was expected.
    """


class Integer:
    """
    A whole number from ``low`` to ``high``, named ``what`` in messages.
    """

    def __init__(self, low: int, high: int, what: str) -> None:
        self.low, self.high, self.what = low, high, what
        self.accepts = f"{low}-{high}"

    def __call__(self, text: str) -> int:
        if not re.fullmatch(r"[0-9]{1,6}", text):
            raise BadValue(f"{text!r} is not {self.what} ({self.low}-{self.high})")
        value = int(text)
        if not self.low <= value <= self.high:
            raise BadValue(f"{value} is out of range for {self.what} ({self.low}-{self.high})")
        return value


def port() -> Integer:
    """
    A TCP or UDP port number.
    """
    return Integer(1, 65535, "a port number")


class Seconds:
    """
    A number of seconds (with up to six decimals) from ``low`` to ``high``.
    """

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high
        self.accepts = f"{low:g}-{high:g}"

    def __call__(self, text: str) -> float:
        if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,6})?", text):
            raise BadValue(f"{text!r} is not a number of seconds")
        value = float(text)
        if not self.low <= value <= self.high:
            raise BadValue(f"{text} seconds is out of range ({self.low:g}-{self.high:g})")
        return value


class Choice:
    """
    One of ``choices``, in any case.
    """

    def __init__(self, choices: Tuple[str, ...]) -> None:
        self.choices = choices

    def __call__(self, text: str) -> str:
        if text.lower() not in self.choices:
            raise BadValue(f"{text!r} is not one of: {', '.join(self.choices)}")
        return text.lower()


class YesNo:
    """
    ``yes`` or ``no``, as a bool.
    """

    accepts = "yes, no"

    def __call__(self, text: str) -> bool:
        if text not in ("yes", "no"):
            raise BadValue(f"must be yes or no, not {text!r}")
        return text == "yes"


def _address(text: str) -> IPAddress:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise BadValue(f"{text!r} is not an IPv4 or IPv6 address") from None
    # ::ffff:a.b.c.d reaches a.b.c.d: judge it (loopback, unspecified) as the IPv4 address.
    return unmapped(address)


def forward_address(text: str) -> IPAddress:
    """
    The hidden service's address: a real address of a host.
    """
    address = _address(text)
    if address.is_unspecified or address.is_multicast:
        raise BadValue(f"cannot forward to {address}: give the service's own address")
    return address


def listen_address(text: str) -> IPAddress:
    """
    An address of this host to listen on.
    """
    address = _address(text)
    if address.is_multicast:
        raise BadValue(f"cannot listen on the multicast address {address}")
    return address


def port_range(text: str) -> Tuple[int, int]:
    """
    An inclusive range of ports, ``LOW-HIGH``.
    """
    match = re.fullmatch(r"([0-9]+)\s*-\s*([0-9]+)", text)
    if match is None:
        raise BadValue(f"{text!r} is not a port range like 30000-60999")
    low, high = port()(match.group(1)), port()(match.group(2))
    if low > high:
        raise BadValue(f"the range {low}-{high} is empty (the first port must be the lower)")
    return low, high


def is_interface_name(text: str) -> bool:
    """
    Whether ``text`` can name a Linux interface: at most 15 bytes, no white space, ``/`` or
    ``:``, and not ``.`` or ``..``.
    """
    return (
        _INTERFACE_RE.fullmatch(text) is not None
        and len(text.encode("utf-8")) <= 15
        and text not in (".", "..")
    )


def interface(text: str) -> str:
    """
    A network interface's name.
    """
    if not is_interface_name(text):
        raise BadValue(f"{text!r} is not an interface name")
    return text


def parsed_by(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """
    The value type of ``parse``, a function that raises ``ValueError`` saying what is wrong.
    """

    def value_type(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise BadValue(str(error)) from None

    return value_type


def text(value: str) -> str:
    """
    Any text.
    """
    return value


def path(value: str) -> str:
    """
    A file or directory; relative to the configuration's directory (``settings`` resolves it).
    """
    if "\x00" in value:
        raise BadValue("a path cannot contain a NUL character")
    return value
