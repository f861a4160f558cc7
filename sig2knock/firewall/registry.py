"""
The firewall backends, registered in one place: a row each, naming the backend (as the
``FIREWALL`` setting does), where its class is (imported only when it is used) and what it can
do. Adding a backend is its module, one row here and its tests; nothing else compares names.

Every backend's class takes ``(reactor, settings)`` and has a static ``available()`` saying
whether this host has its tool.
"""

import importlib
from typing import Any, Callable, Dict, List, NamedTuple, Tuple

from sig2knock.firewall import FirewallError, FirewallSettings, IFirewall

AUTO = "auto"


class Backend(NamedTuple):
    """
    One backend: ``name`` as in ``FIREWALL``; ``module`` and ``class_name`` of its implementation;
    ``tool`` the program it needs (for messages); ``gates`` whether it filters connections at all
    (``none`` does not, so it cannot serve ``FIREWALL_POLICY = lockdown``); ``nat`` whether it can
    forward grants in the kernel (``FORWARD_MODE = nat``); ``auto`` whether ``FIREWALL = auto``
    tries it, in the registry's order.
    """

    name: str
    module: str
    class_name: str
    tool: str = ""
    gates: bool = True
    nat: bool = False
    auto: bool = False

    def load(self) -> Any:
        """
        The backend's class.
        """
        return getattr(importlib.import_module(self.module), self.class_name)

    def available(self) -> bool:
        """
        Whether this host has the backend's tool.
        """
        return bool(self.load().available())

    def build(self, reactor: Any, settings: FirewallSettings) -> IFirewall:
        """
        The backend, set up with ``settings``.
        """
        return self.load()(reactor, settings)


BACKENDS: Dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend("nftables", "sig2knock.firewall.nftables", "NftablesFirewall", "nft", nat=True,
                auto=True),
        Backend("iptables", "sig2knock.firewall.iptables", "IptablesFirewall", "iptables",
                nat=True, auto=True),
        Backend("pktfilter", "sig2knock.firewall.pktfilter", "PktFilterFirewall", "pktctl"),
        Backend("none", "sig2knock.firewall.null", "NoFirewall", gates=False),
    )
}
# What the FIREWALL setting takes.
CHOICES = (AUTO, *BACKENDS)


def choose(
    name: str, policy: str, available: Callable[[Backend], bool] = Backend.available
) -> Tuple[Backend, str]:
    """
    The backend for ``FIREWALL = name`` and why it was chosen (for the start-up log). ``auto``
    takes the first ``auto`` backend this host has, else ``none``. Raises ``FirewallError``
    when ``lockdown`` would end up with no firewall.
    """
    if name != AUTO:
        return BACKENDS[name], "FIREWALL"
    tried: List[str] = []
    for backend in BACKENDS.values():
        if backend.auto:
            if available(backend):
                found = f"FIREWALL = auto: {backend.tool} found"
                return backend, found + (f", no {', '.join(tried)}" if tried else "")
            tried.append(backend.tool)
    if policy == "lockdown":
        raise FirewallError(
            f"FIREWALL_POLICY = lockdown needs a firewall, and FIREWALL = auto found"
            f" {_neither(tried)}; install nftables"
        )
    return BACKENDS["none"], f"FIREWALL = auto: {_neither(tried)} found"


def _neither(tools: List[str]) -> str:
    if len(tools) == 2:
        return f"neither {tools[0]} nor {tools[1]}"
    return "none of " + ", ".join(tools)


def flush_candidates(
    name: str, available: Callable[[Backend], bool] = Backend.available
) -> List[Backend]:
    """
    The backends ``sig2knockd --flush`` cleans: the configured one when it installs rules, or
    (with ``auto``, or ``none`` after a change of mind) every ``auto`` backend this host has,
    since an earlier run may have used either.
    """
    if name != AUTO and BACKENDS[name].gates:
        return [BACKENDS[name]]
    return [backend for backend in BACKENDS.values() if backend.auto and available(backend)]
