"""
``FIREWALL = iptables``: netfilter through ``iptables``/``ip6tables`` (either variant, legacy or
nf_tables), both address families every time.

The daemon owns one chain, ``SIG2KNOCK`` in the ``filter`` table, jumped to from ``INPUT`` by
exactly one rule at position 1. ``start`` replaces the chain and its jump in one
``iptables-restore --noflush`` transaction, so a restart after a crash never duplicates a rule
and never leaves a moment without the chain. A grant is one rule at the top of the chain that
carries its own end: ``-m time --datestop`` (UTC, inclusive to the second), so the kernel stops
matching at the deadline even when the daemon has been killed; the daemon deletes the rule
when the grant ends, and ``start`` sweeps any expired leftovers with the chain. Established
connections are accepted by conntrack state, so they outlive the grant.
"""

import ipaddress
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import (
    Deferred,
    DeferredLock,
    fail,
    inlineCallbacks,
    maybeDeferred,
    succeed,
)
from zope.interface import implementer

from sig2knock.firewall import (
    FirewallError,
    FirewallSettings,
    IFirewall,
    IGrantUse,
    IWallClockGrants,
    check_nat_target,
)
from sig2knock.firewall.iptables_rules import (
    CHAIN,
    NAT_CHAIN,
    count_filter_jumps,
    count_nat_jumps,
    datestop,
    recent_list,
    render_chain,
    render_flush,
    render_grant_args,
    render_nat_chain,
    render_nat_flush,
    render_nat_grant_specs,
    render_rules,
)
from sig2knock.firewall.kernel import (
    forget_recent,
    recent_addresses,
    settle_route_localnet,
    write_route_localnet,
)
from sig2knock.firewall.runner import find_tool, run_tool
from sig2knock.protocol.addresses import IPAddress

Run = Callable[..., "Deferred[bytes]"]
# One installed rule: address family, table, chain, rule specification.
Rule = Tuple[int, str, str, List[str]]


def _table(table: str) -> List[str]:
    """
    The ``-t`` arguments for ``table`` (none for ``filter``, the tools' default).
    """
    return [] if table == "filter" else ["-t", table]


@implementer(IFirewall, IWallClockGrants, IGrantUse)
class IptablesFirewall:
    """
    The iptables backend. ``tools`` names ``iptables`` and ``ip6tables`` (their
    ``-restore`` companions are found beside them by name); ``run`` runs an argv
    (``run_tool``'s signature); ``command_prefix`` is put before every argv (the tests run the
    tools in a network namespace with ``ip netns exec NS``).
    """

    name = "iptables"

    def __init__(
        self,
        reactor: Any,
        settings: FirewallSettings,
        tools: Tuple[str, str] = ("iptables", "ip6tables"),
        run: Run = run_tool,
        command_prefix: Sequence[str] = (),
    ) -> None:
        # Fail now, not at the first grant, on a policy the backend cannot render.
        try:
            render_rules(settings, 4)
        except ValueError as error:
            raise FirewallError(f"iptables: {error}") from None
        self.reactor = reactor
        self.settings = settings
        self.tools = {4: tools[0], 6: tools[1]}
        self.run = run
        self.command_prefix = list(command_prefix)
        # (source, port) -> the rules revoke must delete, datestop included: (family, table,
        # chain, rule spec) each.
        self.grants: Dict[Tuple[IPAddress, int], List[Rule]] = {}
        # (source, port) -> the grant's deadline on the wall clock, as its rules say.
        self.deadlines: Dict[Tuple[IPAddress, int], float] = {}
        # (source, port) -> where a nat grant sends its connection (kept for a move in time).
        self.targets: Dict[Tuple[IPAddress, int], Tuple[IPAddress, int]] = {}
        # One change at a time: a listing and the restore that depends on it stay together.
        self._lock = DeferredLock()

    @staticmethod
    def available() -> bool:
        """
        Whether this host has ``iptables`` and ``ip6tables`` (and their ``-restore``).
        """
        return all(
            find_tool(name) is not None
            for name in ("iptables", "ip6tables", "iptables-restore", "ip6tables-restore")
        )

    # -- running the tools

    def _tool(self, family: int, restore: bool = False) -> str:
        name = self.tools[family] + ("-restore" if restore else "")
        path = find_tool(name)
        if path is None:
            raise FirewallError(
                f"{name}: not found; install iptables or set FIREWALL to another backend"
            )
        return path

    def _run(
        self, family: int, arguments: Sequence[str], stdin: str = "", restore: bool = False
    ) -> "Deferred[bytes]":
        try:
            argv = [*self.command_prefix, self._tool(family, restore), "-w", *arguments]
        except FirewallError as error:
            return fail(error)
        if stdin:
            return maybeDeferred(self.run, self.reactor, argv, stdin.encode("ascii"))
        return maybeDeferred(self.run, self.reactor, argv)

    def _locked(self, function: Callable[..., Any], *args: Any) -> Deferred:
        return self._lock.run(inlineCallbacks(function), *args)

    # -- IFirewall

    def start(self) -> Deferred:
        """
        Replace the chain and its jump for both families (after a crash too): leftover jumps
        are deleted and the chain emptied in the same transaction that installs the new rules.
        """
        return self._locked(self._start)

    def _start(self) -> Any:
        had_nat = False
        for family in (4, 6):
            listing = yield self._run(family, ["-t", "filter", "-S"])
            jumps, _exists = count_filter_jumps(listing)
            script = render_chain(self.settings, family, jumps)
            yield self._run(family, ["--noflush"], script, restore=True)
            # nat: (re)install the nat chain of the target's family; another mode or family:
            # remove what an earlier nat run left.
            if not self._looks_at_nat():
                continue
            nat_family = family == self._nat_family()
            nat_jumps, nat_exists = yield self._nat_state(family, required=nat_family)
            had_nat = had_nat or nat_exists
            if nat_family:
                yield self._run(family, ["--noflush"], render_nat_chain(nat_jumps), restore=True)
            elif nat_jumps or nat_exists:
                script = render_nat_flush(nat_jumps, nat_exists)
                yield self._run(family, ["--noflush"], script, restore=True)
        # The chains were replaced: whatever grants an earlier start knew of are gone.
        self.grants.clear()
        self.deadlines.clear()
        self.targets.clear()
        # Only now that the guarding rule is in place (or after an earlier nat run).
        settle_route_localnet(self.settings, earlier_nat=had_nat)

    def _looks_at_nat(self) -> bool:
        # In nat mode; or, knowing the interface, to undo what an earlier nat run left there.
        return self.settings.nat_to is not None or bool(self.settings.interface)

    def _nat_family(self) -> Optional[int]:
        return self.settings.nat_to[0].version if self.settings.nat_to is not None else None

    @inlineCallbacks
    def _nat_state(self, family: int, required: bool) -> Any:
        """
        How many jumps to our nat chain there are in ``family``, and whether the chain exists.
        A kernel without the nat table has none of ours; unless nat is ``required``.
        """
        try:
            listing = yield self._run(family, ["-t", "nat", "-S"])
        except FirewallError:
            if required:
                raise
            listing = b""
        return count_nat_jumps(listing)

    def grant(
        self,
        source: IPAddress,
        port: int,
        deadline: float,
        target: Optional[Tuple[IPAddress, int]] = None,
    ) -> Deferred:
        """
        Insert the grant at the top of the chain; refused (nothing added) when its deadline
        leaves no whole second to match in. With a ``target`` (a service in nat mode) its DNAT
        rule sends the connection there; without one, it is a filter rule for the listener.
        """
        return self._locked(self._grant, source, port, deadline, target)

    def clock_stepped_back(self, seconds: float) -> Deferred:
        """
        The wall clock went back by ``seconds``: re-insert every open grant with its
        ``--datestop`` as many seconds earlier (the kernel compares it with the new clock),
        keeping what a nat grant remembers of its one connection; revoke those whose time is
        over on the new clock (see ``IWallClockGrants``).
        """
        return self._locked(self._rebase, seconds)

    def _rebase(self, seconds: float) -> Any:
        now = self.reactor.seconds()
        failures: List[FirewallError] = []
        for (address, port), deadline in list(self.deadlines.items()):
            moved = deadline - seconds
            try:
                if math.floor(moved) <= math.floor(now):
                    yield from self._revoke(address, port)
                else:
                    target = self.targets.get((address, port))
                    yield from self._grant(address, port, moved, target, fresh=False)
            except FirewallError as error:
                failures.append(error)  # every grant is tried
        if failures:
            raise FirewallError(
                f"{len(failures)} grant(s) could not be moved back; first: {failures[0]}"
            )

    def _grant(
        self,
        source: IPAddress,
        port: int,
        deadline: float,
        target: Optional[Tuple[IPAddress, int]] = None,
        fresh: bool = True,
    ) -> Any:
        now = self.reactor.seconds()
        # The rule matches through second floor(deadline) - 1: it must not lie in the past.
        if math.floor(deadline) <= math.floor(now):
            raise FirewallError(
                f"grant of port {port} to {source} refused: its deadline has passed"
                f" ({deadline:.3f} <= now {now:.3f})"
            )
        address = ipaddress.ip_address(str(source))
        family = address.version
        key = (address, port)
        rules: List[Rule]
        check_nat_target(self.settings, target, "iptables")
        if target is None:
            rules = [(family, "filter", CHAIN, render_grant_args(address, port, deadline))]
        else:
            if family != self._nat_family():
                raise FirewallError(
                    f"FORWARD_MODE = nat cannot forward an IPv{family} client to"
                    f" {self.settings.nat_to[0]}; use FORWARD_MODE = proxy for both families"
                )
            if fresh:  # a grant moved in time keeps the record of its one connection
                forget_recent(recent_list(port), address)
            self.targets[key] = target
            once, dnat = render_nat_grant_specs(address, port, datestop(deadline), target)
            rules = [(family, "nat", NAT_CHAIN, once), (family, "nat", NAT_CHAIN, dnat)]
            # A nat grant renewed (or moved with the clock) drops its older rules first: its
            # guard rule is the same text, and deleting it after the insert would delete the new
            # one and leave the DNAT rule above the old guard. The DNAT rule goes first, so there
            # is never forwarding without its guard (only, for a moment, no grant at all).
            previous = self.grants.get(key)
            if previous is not None:
                for rule in reversed(previous):
                    yield self._delete(*rule)
                    self.grants[key] = [known for known in self.grants[key] if known != rule]
                del self.grants[key]
        # Inserted at the top in reverse, so they stand in the chain in the order listed. A
        # refused insert takes back the ones before it: a refused grant leaves nothing behind
        # (a nat DNAT rule without its one-connection guard would let several in).
        inserted: List[Rule] = []
        try:
            for rule in reversed(rules):
                rule_family, table, chain, spec = rule
                yield self._run(rule_family, [*_table(table), "-I", chain, "1", *spec])
                inserted.append(rule)
        except FirewallError as refused:
            left = []
            for rule in inserted:
                try:
                    yield self._delete(*rule)
                except FirewallError:
                    left.append(rule)
            if left:  # still in the chain: remembered, so that revoke and stop try again
                self.grants[key] = self.grants.get(key, []) + left
            raise refused
        previous = self.grants.get(key)
        self.grants[key] = rules
        self.deadlines[key] = deadline
        if previous is not None and previous != rules:
            # A renewed grant: the older rules (another datestop) go. One that stays is still
            # tracked, so that revoke and stop try again.
            for rule in previous:
                try:
                    yield self._delete(*rule)
                except FirewallError:
                    self.grants[key] = self.grants[key] + [rule]
                    raise

    def used_grants(self, grants: Sequence[Tuple[IPAddress, int]]) -> Deferred:
        """
        In nat mode a grant's first connection puts its source into the port's ``xt_recent``
        list: the open ``grants`` whose list holds their source are the used ones
        (``IGrantUse``).
        """
        if self.settings.nat_to is None:
            return succeed(set())
        try:
            return succeed({
                (source, port) for source, port in grants
                if ipaddress.ip_address(str(source)) in recent_addresses(recent_list(port))
            })
        except FirewallError as error:
            return fail(error)

    def revoke(
        self, source: IPAddress, port: int, target: Optional[Tuple[IPAddress, int]] = None
    ) -> Deferred:
        """
        Delete exactly the rule ``grant`` inserted for ``source`` and ``port`` (``target`` is
        not needed: the rules are remembered); a rule that is already gone (or never known to
        this object) is not an error.
        """
        return self._locked(self._revoke, source, port)

    def _revoke(self, source: IPAddress, port: int) -> Any:
        key = (ipaddress.ip_address(str(source)), port)
        known = self.grants.pop(key, None)
        deadline = self.deadlines.pop(key, None)
        target = self.targets.pop(key, None)
        if known is None:
            return
        try:
            for rule in known:
                yield self._delete(*rule)
        except FirewallError:
            self.grants[key] = known  # still there: stop() will try again
            if deadline is not None:
                self.deadlines[key] = deadline
            if target is not None:
                self.targets[key] = target
            raise

    @inlineCallbacks
    def _delete(self, family: int, table: str, chain: str, spec: List[str]) -> Any:
        try:
            yield self._run(family, [*_table(table), "-D", chain, *spec])
        except FirewallError as error:
            # Gone already (a restart replaced the chain, a flush, a hand)? Then all is well.
            try:
                yield self._run(family, [*_table(table), "-C", chain, *spec])
            except FirewallError:
                return
            raise error

    def stop(self) -> Deferred:
        """
        Delete every grant this object knows of; the base rules stay, the host stays closed.
        Every grant is tried; the first failure is reported.
        """
        return self._locked(self._stop)

    def _stop(self) -> Any:
        failures: List[FirewallError] = []
        for key in list(self.grants):
            try:
                yield from self._revoke(*key)
            except FirewallError as error:
                failures.append(error)
        if failures:
            raise FirewallError(
                f"{len(failures)} grant(s) could not be removed; first: {failures[0]}"
            )

    def flush(self) -> Deferred:
        """
        Remove the jumps and the chain for both families; nothing installed is not an error.
        """
        return self._locked(self._flush)

    def _flush(self) -> Any:
        had_nat = False
        for family in (4, 6):
            listing = yield self._run(family, ["-t", "filter", "-S"])
            jumps, exists = count_filter_jumps(listing)
            if jumps or exists:
                script = render_flush(jumps, exists)
                yield self._run(family, ["--noflush"], script, restore=True)
            if not self._looks_at_nat():
                continue
            nat_jumps, nat_exists = yield self._nat_state(family, required=False)
            if nat_jumps or nat_exists:
                had_nat = True
                script = render_nat_flush(nat_jumps, nat_exists)
                yield self._run(family, ["--noflush"], script, restore=True)
        self.grants.clear()
        self.deadlines.clear()
        self.targets.clear()
        if had_nat and self.settings.interface:
            write_route_localnet(self.settings.interface, "0")
