"""
``FIREWALL = nftables``: the daemon owns one table, ``inet sig2knock``, and replaces it whole on
every start. Grants are elements of the sets ``grants4`` and ``grants6`` (source address . TCP
port) with a timeout, so the kernel ends each grant at its deadline even if the daemon is gone.

The scripts come from ``sig2knock.firewall.nftables_rules``; ``NftablesFirewall`` runs each one
as a single ``nft -f -`` call (in-process when it can: see ``sig2knock.firewall.libnftables``), so
every change is one transaction, whole or not at all.
"""

import ipaddress
from typing import Any, Callable, List, Optional, Sequence, Set, Tuple

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sig2knock.firewall import (
    FirewallError,
    FirewallSettings,
    IFirewall,
    IGrantUse,
    check_nat_target,
)
from sig2knock.firewall.kernel import settle_route_localnet, write_route_localnet
from sig2knock.firewall.libnftables import choose_runner
from sig2knock.firewall.nftables_rules import (
    GRANT_MARGIN_MS,
    NAT_CHAIN,
    TABLE,
    parse_grant_listing,
    render_flush,
    render_grant,
    render_listing,
    render_replace_grant,
    render_revoke,
    render_ruleset,
    render_stop,
)
from sig2knock.firewall.runner import find_tool
from sig2knock.protocol.addresses import IPAddress, unmapped

@implementer(IFirewall, IGrantUse)
class NftablesFirewall:
    """
    The nftables backend: one ``nft -f -`` call per operation through ``run`` (``IToolRunner``).

    ``command_prefix`` is put before the nft command (``["ip", "netns", "exec", "NS"]`` runs it
    in a network namespace); its first word is looked up like the tool when it is not a path.
    """

    name = "nftables"
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: FirewallSettings,
        tool: str = "nft",
        run: Optional[Callable[..., Deferred]] = None,
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.tool = tool
        self.run, self.runs = choose_runner(command_prefix, given=run)
        self.command_prefix = list(command_prefix)

    @staticmethod
    def available() -> bool:
        """
        Whether this host has ``nft``.
        """
        return find_tool("nft") is not None

    def _argv(self) -> List[str]:
        path = find_tool(self.tool)
        if path is None:
            raise FirewallError(f"{self.tool}: not found; install nftables or set FIREWALL")
        prefix = list(self.command_prefix)
        if prefix:
            first = find_tool(prefix[0])
            if first is None:
                raise FirewallError(f"{prefix[0]}: not found")
            prefix[0] = first
        return prefix + [path, "-f", "-"]

    def _apply(
        self,
        operation: str,
        message: str,
        render: Callable[[], str],
        if_exists: Optional[Callable[[], str]] = None,
        **fields: Any,
    ) -> Deferred:
        """
        Render the script and run it; fire with ``None`` and log ``message`` (a format string
        over ``fields``), or fail with ``FirewallError`` whatever went wrong (unlogged), so the
        daemon always fails closed. When nft says an element exists and ``if_exists`` is given, that
        script is run instead.
        """

        def go() -> Deferred:
            script = render()
            return self.run(self.reactor, self._argv(), stdin=script.encode("utf-8"))

        def done(_: Any) -> None:
            self.log.info(message, operation=operation, table=TABLE, **fields)

        def failed(reason: Failure) -> Any:
            if (
                if_exists is not None
                and reason.check(FirewallError)
                and "File exists" in str(reason.value)
            ):
                return self._apply(operation, message, if_exists, **fields)
            if not reason.check(FirewallError):
                reason = Failure(FirewallError(f"nftables: {operation}: {reason.value}"))
            # Not logged here: whoever asked for the change says it once (the refusal log for a
            # grant, the firewall service for the rules).
            return reason

        return maybeDeferred(go).addCallbacks(done, failed)

    def start(self) -> Deferred:
        """
        Replace the table (``policy``, assigned port range and control port from the settings).
        With nat to loopback, ``route_localnet`` is turned on only once the table that guards it
        is in place; a table of an earlier nat run that turned it on is followed by turning it
        off again.
        """
        low, high = self.settings.port_range
        self.log.info("nftables: changes run {runs}", runs=self.runs, table=TABLE)
        looking = self._had_loopback_nat()

        def install(had_nat: bool) -> Deferred:
            installing = self._apply(
                "start",
                "nftables: installed table inet {table} (policy {policy}, assigned ports"
                " {low}-{high}, control port {control_port})",
                lambda: render_ruleset(self.settings),
                policy=self.settings.policy,
                control_port=self.settings.control_port,
                low=low,
                high=high,
            )
            return installing.addCallback(
                lambda _: settle_route_localnet(self.settings, earlier_nat=had_nat)
            )

        return looking.addCallback(install)

    def _had_loopback_nat(self) -> Deferred:
        """
        Whether the table now installed (by an earlier run) is a nat one: then it may have turned
        on ``route_localnet``. Only asked when there is an interface to turn it off on.
        """
        if not self.settings.interface:
            return succeed(False)
        script = render_listing()
        try:
            listing = self.run(self.reactor, self._argv(), stdin=script.encode("utf-8"))
        except FirewallError as error:
            return fail(error)
        listing.addCallback(lambda output: f"chain {NAT_CHAIN}".encode("ascii") in output)
        listing.addErrback(lambda _: False)
        return listing

    def grant(
        self,
        source: IPAddress,
        port: int,
        deadline: float,
        target: Optional[Tuple[IPAddress, int]] = None,
    ) -> Deferred:
        """
        Add ``source . port`` with the time left until ``deadline``, rounded down to the ms,
        less ``GRANT_MARGIN_MS``: the kernel counts from nft's commit, a few ms after the script
        is written, and the grant must not outlive the deadline the client was told. With a
        ``target`` (a service in nat mode) the map sends the connection there.
        """
        try:
            check_nat_target(self.settings, target, "nftables")
        except FirewallError as error:
            return fail(error)

        def timeout_ms() -> int:
            left = int((deadline - self.reactor.seconds()) * 1000) - GRANT_MARGIN_MS
            # A past deadline makes the rendering refuse (FirewallError): nothing is opened.
            return max(left, 0)

        return self._apply(
            "grant",
            "nftables: granted {source} TCP port {port} until {deadline}",
            lambda: render_grant(source, port, timeout_ms(), target),
            if_exists=lambda: render_replace_grant(source, port, timeout_ms(), target),
            source=str(source),
            port=port,
            deadline=deadline,
        )

    def revoke(
        self, source: IPAddress, port: int, target: Optional[Tuple[IPAddress, int]] = None
    ) -> Deferred:
        """
        Remove ``source . port`` (in nat mode with its map entry to ``target``); succeeds when
        it already expired.
        """
        try:
            check_nat_target(self.settings, target, "nftables")
        except FirewallError as error:
            return fail(error)
        return self._apply(
            "revoke",
            "nftables: revoked {source} TCP port {port}",
            lambda: render_revoke(source, port, target),
            source=str(source),
            port=port,
        )

    def used_grants(self, grants: Sequence[Tuple[IPAddress, int]]) -> Deferred:
        """
        In nat mode the kernel deletes a grant's element at its first connection: the open
        ``grants`` missing from the sets are the used ones (``IGrantUse``).
        """
        if self.settings.nat_to is None:
            return succeed(set())
        try:
            listing = self.run(self.reactor, self._argv(), stdin=render_listing().encode("utf-8"))
        except FirewallError as error:
            return fail(error)

        def missing(output: bytes) -> Set[Tuple[IPAddress, int]]:
            held = parse_grant_listing(output.decode("utf-8", "replace"))
            return {(source, port) for source, port in grants
                    if (unmapped(ipaddress.ip_address(str(source))), port) not in held}

        return listing.addCallback(missing)

    def stop(self) -> Deferred:
        """
        Empty both grant sets; the base rules stay, so the host stays closed.
        """
        return self._apply(
            "stop",
            "nftables: removed every grant (the base rules stay)",
            lambda: render_stop(self.settings),
        )

    def flush(self) -> Deferred:
        """
        Remove the table, and turn ``route_localnet`` off again if a nat run had turned it on.
        """
        looking = self._had_loopback_nat()

        def remove(had_nat: bool) -> Deferred:
            removing = self._apply("flush", "nftables: removed table inet {table}", render_flush)
            if had_nat:
                removing.addCallback(
                    lambda _: write_route_localnet(self.settings.interface, "0")
                )
            return removing

        return looking.addCallback(remove)
