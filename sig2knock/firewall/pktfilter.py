"""
``FIREWALL = pktfilter``: PktFilter (Hervé Schauer Consultants), the seed's Windows firewall, a
packet filter driven by a rules file in a syntax close to OpenBSD pf's (``block in on eth0
all``, ``pass in on eth0 proto tcp from 192.0.2.7 to any port = 22``).

Untested on Windows; tested here by rendering and against a stand-in executable.

The daemon's whole rule set is rendered into one file, written atomically, and loaded with
``pktctl`` after flushing what was loaded before. PktFilter has no rule expiry: the backend
keeps its own list of grants and reloads the whole file on every change, and a grant ends when
the daemon calls ``revoke``. That is weaker than the nftables and iptables backends, whose
grants expire in the kernel: a daemon killed while a grant is open leaves that grant in place
until the daemon starts again (``start`` loads the rules without any grant).

Assumptions, from the pf-like syntax and libdnet's PktFilter driver, unverified on Windows:
- when several rules match a packet the last one wins (pf's rule), so grants come after the
  ``block`` lines;
- a port range is written ``port LOW-1 >< HIGH+1``: pf's ``><`` excludes both ends, so this
  covers LOW..HIGH inclusive (it is also how libdnet writes ranges for PktFilter); a range
  that reaches 65535 is written ``port > LOW-1``, a single port ``port = PORT``;
- PktFilter filters without connection state (it drives the Windows 2000/XP packet-filtering
  API), so neither "an established connection outlives its grant" nor replies to the host's
  own outgoing traffic under ``lockdown`` are guaranteed the way conntrack guarantees them.
"""

import ipaddress
from typing import Any, Callable, Iterable, List, Optional, Tuple

from twisted.internet.defer import Deferred, DeferredLock, fail, maybeDeferred, succeed
from zope.interface import implementer

from sig2knock.firewall import FirewallError, FirewallSettings, IFirewall
from sig2knock.firewall.runner import find_tool, run_tool
from sig2knock.protocol import files
from sig2knock.protocol.addresses import IPAddress

DEFAULT_RULES_PATH = r"C:\Program Files\PktFilter\rules.txt"
DEFAULT_TOOL = "pktctl"
# After PktFilter's manual: ``pktctl -F all`` flushes every loaded rule, ``pktctl -f FILE``
# loads a rules file. Untested on Windows.
LOAD_ARGUMENTS = ("-F", "all", "-f")

HEADER = "# sig2knock: generated, replaced on every change; do not edit"

Run = Callable[..., "Deferred[bytes]"]
Grant = Tuple[IPAddress, int]


def port_match(low: int, high: int) -> str:
    """
    PktFilter's match for TCP/UDP ports ``low``..``high`` inclusive.
    """
    if low == high:
        return f"port = {low}"
    if high >= 65535:
        return f"port > {low - 1}"
    # ``><`` is exclusive at both ends (pf), hence one below and one above.
    return f"port {low - 1} >< {high + 1}"


def render_rules(settings: FirewallSettings, grants: Iterable[Grant] = ()) -> str:
    """
    The PktFilter rules file for ``settings`` with ``grants`` (``(source, port)`` pairs, in the
    order given) after the ``block`` lines they override.
    """
    interface = settings.interface
    if not interface or any(c.isspace() for c in interface):
        raise ValueError(f"PktFilter needs an interface name, not {interface!r}")
    on = f"on {interface}"
    lines = [HEADER]
    if settings.policy == "ports":
        lines.append(f"block in {on} proto tcp from any to any {port_match(*settings.port_range)}")
    elif settings.policy == "lockdown":
        lines += [
            f"block in {on} all",
            f"pass in {on} proto udp from any to any port = {settings.control_port}",
            f"pass out {on} all",
        ]
    else:
        raise ValueError(f"unknown firewall policy {settings.policy!r}")
    for source, port in grants:
        address = ipaddress.ip_address(str(source))
        lines.append(f"pass in {on} proto tcp from {address} to any port = {port}")
    return "\n".join(lines) + "\n"


@implementer(IFirewall)
class PktFilterFirewall:
    """
    The PktFilter backend: ``settings.interface`` names the interface as PktFilter does
    (``eth0``); ``tool`` is ``pktctl``; ``rules_path`` is the rules file it loads; ``run`` runs
    an argv (``run_tool``'s signature).

    Untested on Windows; tested here by rendering and against a stand-in executable. Grants
    do not expire by themselves: see the module's notes.
    """

    name = "pktfilter"

    def __init__(
        self,
        reactor: Any,
        settings: FirewallSettings,
        tool: str = DEFAULT_TOOL,
        rules_path: str = DEFAULT_RULES_PATH,
        run: Run = run_tool,
    ) -> None:
        try:
            render_rules(settings)  # refuse a policy or interface it cannot render, now
        except ValueError as error:
            raise FirewallError(f"pktfilter: {error}") from None
        self.reactor = reactor
        self.settings = settings
        self.tool = tool
        self.rules_path = rules_path
        self.run = run
        # In grant order; the file lists them in this order.
        self.grants: List[Grant] = []
        self._lock = DeferredLock()

    @staticmethod
    def available() -> bool:
        """
        Whether ``pktctl`` can be found on this host.
        """
        return find_tool(DEFAULT_TOOL) is not None

    def _load(self, grants: List[Grant]) -> Deferred:
        """
        Write the rules with ``grants`` and have PktFilter load them; on success they are the
        backend's grants.
        """
        path = find_tool(self.tool)
        if path is None:
            return fail(
                FirewallError(
                    f"{self.tool}: not found; install PktFilter or set FIREWALL to another backend"
                )
            )
        try:
            files.write_atomically(
                self.rules_path, render_rules(self.settings, grants).encode("ascii")
            )
        except OSError as error:
            return fail(FirewallError(f"{self.rules_path}: cannot write the rules: {error}"))
        done = maybeDeferred(self.run, self.reactor, [path, *LOAD_ARGUMENTS, self.rules_path])

        def loaded(_: object) -> None:
            self.grants = grants

        return done.addCallback(loaded)

    def _change(self, compute: Callable[[List[Grant]], List[Grant]]) -> Deferred:
        def change() -> Deferred:
            try:
                grants = compute(list(self.grants))
            except FirewallError as error:
                return fail(error)
            return self._load(grants)

        return self._lock.run(change)

    def start(self) -> Deferred:
        """
        Load the base rules without any grant (a crashed run's grants end here).
        """
        return self._change(lambda grants: [])

    def grant(
        self, source: IPAddress, port: int, deadline: float, target: Optional[Any] = None
    ) -> Deferred:
        """
        Reload with a ``pass`` rule for ``source`` to ``port``; refused when the deadline has
        passed. The daemon's ``revoke`` at the deadline ends it.
        """
        key = (ipaddress.ip_address(str(source)), port)

        def add(grants: List[Grant]) -> List[Grant]:
            now = self.reactor.seconds()
            if deadline <= now:
                raise FirewallError(
                    f"grant of port {port} to {source} refused: its deadline has passed"
                )
            return [g for g in grants if g != key] + [key]

        return self._change(add)

    def revoke(self, source: IPAddress, port: int, target: Optional[Any] = None) -> Deferred:
        """
        Reload without the grant of ``source`` to ``port``; one already gone changes nothing.
        """
        key = (ipaddress.ip_address(str(source)), port)

        def remove() -> Deferred:
            if key not in self.grants:
                return succeed(None)
            return self._load([g for g in self.grants if g != key])

        return self._lock.run(remove)

    def stop(self) -> Deferred:
        """
        Reload the base rules alone: every grant ends, the host stays closed.
        """
        return self._change(lambda grants: [])

    def flush(self) -> Deferred:
        """
        Unload every PktFilter rule (``pktctl -F all``; every load flushes them all too, the
        daemon's file being the whole rule set) and leave a rules file without rules, so that
        nothing of the daemon's is loaded again from it.
        """

        def flush() -> Deferred:
            path = find_tool(self.tool)
            if path is None:
                return fail(FirewallError(f"{self.tool}: not found; install PktFilter"))
            try:
                files.write_atomically(self.rules_path, (HEADER + "\n").encode("ascii"))
            except OSError as error:
                return fail(FirewallError(f"{self.rules_path}: cannot write the rules: {error}"))
            done = maybeDeferred(self.run, self.reactor, [path, *LOAD_ARGUMENTS[:2]])

            def flushed(_: object) -> None:
                self.grants = []

            return done.addCallback(flushed)

        return self._lock.run(flush)
