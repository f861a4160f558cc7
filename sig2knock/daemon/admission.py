"""
What an authentic P1 may ask for: the server's knock protocol and at least ``KNOCK_COUNT`` knocks,
a service this server offers to its user (``sig2knock.daemon.catalog``), and a source address
that agrees with the one the client says it sends from.

The address check is what keeps a relay out: an on-path host that re-sends a client's P1 from its
own address sends it from an address the client did not write into it. A client that is not behind
NAT writes the address the server sees; one behind NAT writes a private one. So a P1 whose address
is a public one other than its source is refused (relayed, or spoofed), and with
``REQUIRE_SOURCE_ADDRESS = yes`` any P1 whose address is not its source is (for servers whose
clients are never behind NAT: then no relay can use a grant, however the client connects).
"""

from typing import Any

from sig2knock.daemon.catalog import HiddenService
from sig2knock.daemon.session import SessionRefused
from sig2knock.protocol.addresses import PROTOCOL_NAMES, PROTOCOLS_BY_NAME, IPAddress, unmapped
from sig2knock.protocol.wire import KnockRequest


def check_request(
    config: Any, source: IPAddress, user: str, request: KnockRequest
) -> HiddenService:
    """
    The service that ``user``'s P1 from ``source`` asks for; raises ``SessionRefused`` when the
    settings ``config`` do not allow the request.
    """
    expected = PROTOCOLS_BY_NAME[config.knock_proto]
    if request.protocol != expected:
        raise SessionRefused(
            "knock-protocol",
            f"{PROTOCOL_NAMES[request.protocol]} knocks, the server expects"
            f" {PROTOCOL_NAMES[expected]} (KNOCK_PROTO)",
        )
    if len(request.ports) < config.knock_count:
        raise SessionRefused(
            "knock-count",
            f"{len(request.ports)} knocks, the server requires {config.knock_count}"
            " (KNOCK_COUNT)",
        )
    service = config.catalog.find(request.service, user)
    claimed = request.client_address
    if claimed is None:
        if config.require_source_address:
            raise SessionRefused(
                "no-address", "the client did not say its address (REQUIRE_SOURCE_ADDRESS)"
            )
        return service
    claimed = unmapped(claimed)
    if claimed != source and (config.require_source_address or claimed.is_global):
        raise SessionRefused(
            "address-mismatch",
            f"the client says it sends from {claimed}: relayed, spoofed or translated",
        )
    return service
