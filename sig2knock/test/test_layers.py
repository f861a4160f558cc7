"""
The layout is a rule, not a habit: each folder of the package imports only what stands below it
on the data path. Every import of every module is read from its source (``ast``), those inside
functions too, so a lazy import cannot slip past.

- ``sig2knock.protocol``: what client and daemon share; imports nothing else of the package.
- ``sig2knock.client`` and the ``sig2knockc`` command: the protocol only.
- ``sig2knock.firewall``: the protocol only (never the daemon's settings).
- ``sig2knock.daemon``: anything but the client and the commands.
- Twisted, zope.interface and pcapy-ng are the daemon's and the firewall's alone.
"""

import ast
import os
from typing import Iterator, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

import sig2knock


PACKAGE = os.path.dirname(os.path.abspath(sig2knock.__file__))
SERVER_ONLY = ("twisted", "zope", "pcapy")

# Module prefix -> the sig2knock modules it may import (prefixes), and whether it may import
# Twisted, zope.interface and pcapy-ng.
RULES: List[Tuple[str, Tuple[str, ...], bool]] = [
    ("sig2knock.protocol", ("sig2knock.protocol",), False),
    ("sig2knock.client", ("sig2knock.protocol", "sig2knock.client"), False),
    ("sig2knock.scripts.client", ("sig2knock.protocol", "sig2knock.client"), False),
    ("sig2knock.firewall", ("sig2knock.protocol", "sig2knock.firewall"), True),
    (
        "sig2knock.daemon",
        ("sig2knock.protocol", "sig2knock.firewall", "sig2knock.daemon", "sig2knock.examples"),
        True,
    ),
]


def modules() -> Iterator[Tuple[str, str]]:
    """
    Every module of the package except its tests: (dotted name, path).
    """
    for directory, subdirectories, names in os.walk(PACKAGE):
        subdirectories[:] = [name for name in subdirectories if name not in ("test", "__pycache__")]
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                relative = os.path.relpath(path, os.path.dirname(PACKAGE))[: -len(".py")]
                dotted = relative.replace(os.sep, ".")
                yield dotted[: -len(".__init__")] if dotted.endswith(".__init__") else dotted, path


def imports(dotted: str, path: str) -> Iterator[str]:
    """
    The names of the modules (or packages) ``path`` imports, relative imports resolved.
    """
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read(), path)
    package = dotted if path.endswith("__init__.py") else dotted.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # "from sig2knock.protocol import wire" imports sig2knock.protocol.wire.
            yield from (f"{base}.{alias.name}" for alias in node.names)


def rule_for(dotted: str) -> Tuple[Tuple[str, ...], bool]:
    """
    What ``dotted`` may import; the commands of the daemon and the package root may import
    everything.
    """
    for prefix, allowed, server in RULES:
        if dotted == prefix or dotted.startswith(prefix + "."):
            return allowed, server
    return ("sig2knock",), True


def within(name: str, prefixes: Tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def violations() -> List[str]:
    found = []
    for dotted, path in modules():
        allowed, server = rule_for(dotted)
        for name in imports(dotted, path):
            ours = name == "sig2knock" or name.startswith("sig2knock.")
            if ours and name not in ("sig2knock.__version__",) and not within(name, allowed):
                found.append(f"{dotted} imports {name}")
            if not server and name.split(".")[0] in SERVER_ONLY:
                found.append(f"{dotted} imports {name}")
    return sorted(found)


class LayerTests(SynchronousTestCase):
    """
    No module reaches across the layout.
    """

    def test_noImportAcrossLayers(self) -> None:
        self.assertEqual(violations(), [])

    def test_everyModuleIsChecked(self) -> None:
        """
        The walk finds the modules of every folder (a test that checks nothing cannot fail).
        """
        found = {dotted for dotted, _ in modules()}
        for expected in ("sig2knock.protocol.wire", "sig2knock.client.knocker",
                         "sig2knock.firewall.nftables", "sig2knock.daemon.sessions",
                         "sig2knock.scripts.client"):
            self.assertIn(expected, found)

    def test_violationsAreFound(self) -> None:
        """
        The rules catch what they are meant to: a client module importing the daemon or Twisted.
        """
        self.assertEqual(rule_for("sig2knock.client.knocker"),
                         (("sig2knock.protocol", "sig2knock.client"), False))
        self.assertFalse(within("sig2knock.daemon.settings", rule_for("sig2knock.firewall.x")[0]))
        self.assertTrue(within("sig2knock.protocol.wire", rule_for("sig2knock.firewall.x")[0]))
