"""
The documents that name code stay true to it: every test that docs/SECURITY.md gives as the proof of
a promise exists, every function docs/ARCHITECTURE.md names on the path of a knock exists where it
says, every module is in its list, the README's configuration reference is the schema's, and the
drawing of a session's states (docs/server-statemachine.dot) has exactly the states and moves of
``sig2knock.daemon.session``. They read the checkout's files; no root needed.
"""

import ast
import os
import re
from typing import Dict, Iterator, List, Optional, Set, Tuple

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon import schema
from sig2knock.daemon.schema import KNOWN_KEYS
from sig2knock.daemon.session import TRANSITIONS, State

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPOSITORY, "docs")
PACKAGES = ("protocol", "client", "daemon", "firewall")

_CODE = re.compile(r"`([^`]+)`")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_TEST_NAME = re.compile(r"(test_\w+|[A-Z]\w*Tests(\.test_\w+)?)")


def read(name: str) -> str:
    with open(os.path.join(DOCS, name), encoding="utf-8") as document:
        return document.read()


def names_in(path: str) -> Set[str]:
    """
    What ``path`` defines: its top-level functions, classes and assignments, and each class's
    members as ``Class.member``.
    """
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read(), path)
    defined: Set[str] = set()

    def assigned(node: ast.AST) -> List[str]:
        if isinstance(node, ast.Assign):
            return [target.id for target in node.targets if isinstance(target, ast.Name)]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            return [node.target.id]
        return []

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        defined.update(assigned(node))
        if isinstance(node, ast.ClassDef):
            for member in node.body:
                if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    defined.add(f"{node.name}.{member.name}")
                for name in assigned(member):
                    defined.add(f"{node.name}.{name}")
    return defined


def package_modules() -> Iterator[Tuple[str, str]]:
    """
    (package, module name) of every module of the four packages.
    """
    for package in PACKAGES:
        directory = os.path.join(REPOSITORY, "sig2knock", package)
        for entry in sorted(os.listdir(directory)):
            if entry.endswith(".py") and entry != "__init__.py":
                yield package, entry[:-3]


def find_test_module(name: str) -> Optional[str]:
    """
    The path of a test module named in a document: as written, or in sig2knock/test/.
    """
    for candidate in (name, os.path.join("sig2knock", "test", name)):
        path = os.path.join(REPOSITORY, candidate)
        if os.path.isfile(path):
            return path
    return None


def cited(text: str, is_name: "re.Pattern[str]") -> Iterator[Tuple[str, Optional[str], str]]:
    """
    (row, file, name) for every name in backquotes that follows a ``*.py`` file in the same
    table row of ``text`` (the file it is defined in); ``is_name`` picks which backquoted words
    are code names.
    """
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        current: Optional[str] = None
        for token in _CODE.findall(line):
            if token.endswith(".py"):
                current = token
            elif current is not None and is_name.fullmatch(token):
                yield line, current, token


class ConfigurationReferenceTests(SynchronousTestCase):
    """
    The README's configuration reference is the table the settings' schema gives, verbatim: a
    key added, a default or a reload class changed in the code shows in the README or fails here.
    """

    def test_readmeHasTheSchemaTable(self) -> None:
        with open(os.path.join(REPOSITORY, "README.md"), encoding="utf-8") as readme:
            text = readme.read()
        self.assertIn(schema.reference_table(), text)
        self.assertIn(schema.section_table(), text)


class ServicesExampleTests(SynchronousTestCase):
    """
    docs/services.md's worked example is a configuration the daemon accepts, and each user
    reaches what the text says.
    """

    def test_workedExample(self) -> None:
        from sig2knock.daemon.settings import parse_config

        text = read("services.md").split("```ini\n", 1)[1].split("```\n", 1)[0]
        config = parse_config(text, "/etc/sig2knock/sig2knockd.conf")
        catalog = config.catalog
        self.assertEqual(
            {user: catalog.reachable_by(user) for user in ("alice", "bob", "carol", "dave")},
            {"alice": ["default"], "bob": ["rdp"], "carol": ["rdp"], "dave": ["db"]},
        )
        self.assertEqual(catalog.services["rdp"].open_time, 60)
        self.assertEqual(str(catalog.services["db"].forward_to_ip), "192.168.10.30")


class SecurityProofsTests(SynchronousTestCase):
    """
    docs/SECURITY.md proves each promise by tests; each one it names is there.
    """

    def test_everyCitedTestExists(self) -> None:
        missing = []
        for line, name, test in cited(read("SECURITY.md"), _TEST_NAME):
            path = find_test_module(name)
            if path is None:
                missing.append(f"{name} (no such file)")
            else:
                defined = names_in(path)
                methods = {member.split(".")[-1] for member in defined}
                if test not in defined and test not in methods:
                    missing.append(f"{name} {test}")
        self.assertEqual(missing, [])

    def test_everyCitedFileExists(self) -> None:
        files = set(re.findall(r"`([\w/]*test_\w+\.py)`", read("SECURITY.md")))
        self.assertGreater(len(files), 10)
        self.assertEqual(sorted(name for name in files if find_test_module(name) is None), [])


class ArchitectureTests(SynchronousTestCase):
    """
    docs/ARCHITECTURE.md names the functions of a knock's hops where they are, and lists every
    module.
    """

    def setUp(self) -> None:
        self.text = read("ARCHITECTURE.md")

    def test_namedFunctionsExist(self) -> None:
        checked, missing = 0, []
        for _, name, code in cited(self.text, _NAME):
            if code in KNOWN_KEYS:
                continue  # a configuration key mentioned beside the code
            checked += 1
            path = os.path.join(REPOSITORY, name)
            if not os.path.isfile(path) or code not in names_in(path):
                missing.append(f"{name} {code}")
        self.assertGreater(checked, 30)
        self.assertEqual(missing, [])

    def test_methodsNamedAnywhereExist(self) -> None:
        """
        ``Class.method`` in the text (not only in the hop table) is a method of a class of the
        package.
        """
        defined: Set[str] = set()
        for package, module in package_modules():
            defined |= names_in(os.path.join(REPOSITORY, "sig2knock", package, module + ".py"))
        methods = set(re.findall(r"`([A-Z]\w*\.\w+)`", self.text))
        self.assertGreater(len(methods), 10)
        self.assertEqual(sorted(methods - defined), [])

    def test_everyModuleListed(self) -> None:
        sections: Dict[str, str] = {}
        for package in PACKAGES:
            match = re.search(rf"\*\*{package}/\*\*:(.*?)(?:\n\n|\Z)", self.text, re.S)
            self.assertIsNotNone(match, f"no list of {package}/")
            sections[package] = match.group(1)  # type: ignore[union-attr]
        unlisted = [
            f"{package}/{module}"
            for package, module in package_modules()
            if f"`{module}`" not in sections[package]
        ]
        self.assertEqual(unlisted, [])


class StateDrawingTests(SynchronousTestCase):
    """
    The drawing has the session's states and exactly the moves ``TRANSITIONS`` allows.
    """

    def setUp(self) -> None:
        drawing = read("server-statemachine.dot")
        self.edges = set(re.findall(r"^\s*(\w+)\s*->\s*(\w+)", drawing, re.M))
        self.nodes = set(re.findall(r"^\s*(\w+)\s*\[label=", drawing, re.M))

    def test_states(self) -> None:
        self.assertEqual(self.nodes - {"start"}, {state.value for state in State})

    def test_moves(self) -> None:
        drawn = {(start, end) for start, end in self.edges if start != end and start != "start"}
        allowed = {
            (state.value, later.value) for state, laters in TRANSITIONS.items() for later in laters
        }
        self.assertEqual(drawn, allowed)
        self.assertEqual({end for start, end in self.edges if start == "start"}, {"pending"})


def transcript() -> str:
    """
    PROTOCOL.md §9: one login's messages with fixed keys, ephemerals, nonces and time, as text.
    """
    import ipaddress
    import textwrap

    from Crypto.PublicKey import ECC

    from sig2knock.protocol import keys, wire

    server = keys.private_from_seed(bytes([0x11]) * 32)
    alice = wire.UserKey("alice", keys.private_from_seed(bytes([0x22]) * 32))
    ephemerals = [keys.private_from_seed(bytes([byte]) * 32) for byte in (0x33, 0x44)]
    client = ipaddress.ip_address("198.18.0.2")
    session_id = bytes(range(16))
    generate = ECC.generate
    ECC.generate = lambda **_: ephemerals.pop(0)  # HPKE's ephemeral keys, in order
    try:
        request = wire.KnockRequest(
            session_id, 1_800_000_000_000, 6, (1111, 2222, 3333, 4444), client, door=True
        )
        p1, session = wire.seal_request(request, alice, server.public_key())
    finally:
        ECC.generate = generate
    p2 = wire.encode_confirm(
        wire.Confirm(session_id, 1_800_000_000_100), session, nonce=bytes([0x55]) * 12
    )
    grant = wire.Grant(session_id, 1_800_000_000_102, 40001, 1_800_000_030_102, client, True)
    p3 = wire.encode_grant(grant, session, nonce=bytes([0x66]) * 12)

    def hexed(label: str, data: bytes) -> List[str]:
        return [f"{label}:"] + textwrap.wrap(data.hex(), 96)

    lines = [
        f"server public key: {keys.format_public_key(keys.public_bytes(server))}",
        f"alice public key:  {keys.format_public_key(alice.public)}",
        *hexed(f"P1 ({len(p1)} bytes)", p1),
        f"session tag: {session.tag.hex()}",
        f"replay id:   {session.replay_id.hex()}",
        f"P2 key:      {session.confirm_key.hex()}",
        f"P3 key:      {session.grant_key.hex()}",
        f"door:        {session.door.hex()}",
        *hexed(f"P2 ({len(p2)} bytes)", p2),
        *hexed(f"P3 ({len(p3)} bytes)", p3),
    ]
    return "\n".join(lines) + "\n"


class TranscriptTests(SynchronousTestCase):
    """
    PROTOCOL.md's transcript is what the code makes from its inputs, byte for byte, and it opens
    as the server and the client open real messages.
    """

    def test_transcriptIsReproduced(self) -> None:
        text = read("PROTOCOL.md")
        block = text.split("## 9. A transcript", 1)[1].split("```\n", 2)[1]
        self.assertEqual(block, transcript())

    def test_transcriptOpens(self) -> None:
        from sig2knock.protocol import keys, wire

        lines = transcript().splitlines()

        def message(label: str) -> bytes:
            start = next(i for i, line in enumerate(lines) if line.startswith(label))
            hexed = ""
            for line in lines[start + 1 :]:
                if ":" in line:
                    break
                hexed += line
            return bytes.fromhex(hexed)

        server = keys.private_from_seed(bytes([0x11]) * 32)
        alice = keys.private_from_seed(bytes([0x22]) * 32).public_key()
        received = wire.open_request(
            message("P1 ("), identity=server, users={"alice": alice}.get,
            decoy=keys.generate().public_key(), now=1_800_000_000.0, max_skew=60,
        )
        self.assertEqual((received.user, received.request.ports), ("alice", (1111, 2222, 3333, 4444)))
        session, confirm, _ = wire.decode_confirm(
            message("P2 ("), find=lambda tag: received.keys, now=1_800_000_000.0, max_skew=60
        )
        grant = wire.decode_grant(message("P3 ("), session, now=1_800_000_000.0, max_skew=60)
        self.assertEqual((confirm.session_id, grant.port), (bytes(range(16)), 40001))
        self.assertEqual((received.request.door, grant.door_required), (True, True))


class Fail2banFilterTests(SynchronousTestCase):
    """
    ``etc/fail2ban/sig2knock.conf`` matches the daemon's own line for a connection from an
    address that was not granted (a real source: a TCP handshake), and none of the lines whose
    source can be forged.
    """

    def lines(self) -> List[str]:
        from twisted.logger import Logger, formatEventAsClassicLogText

        from sig2knock.daemon.refusals import RefusalLog

        events: List[dict] = []
        self.patch(RefusalLog, "log", Logger(namespace="sig2knock.daemon.refusals.RefusalLog",
                                             observer=events.append))
        refusals = RefusalLog()
        refusals.refused("198.18.0.9", 51000, "not-granted", "port 40001 is granted to"
                         " 198.18.0.2", what="connection")
        refusals.refused("2001:2::9", 51001, "not-granted", "port 40002 is granted to"
                         " 2001:2::2", what="connection")
        refusals.refused("198.18.0.2", 51002, "second-connection", "port 40001: a grant admits"
                         " one connection", what="connection")
        for reason in ("size", "auth", "knock-count", "address-mismatch", "relay", "replay"):
            refusals.refused("198.18.0.7", 40000, reason, "user alice")
        return [formatEventAsClassicLogText(event).rstrip("\n") for event in events]

    def test_onlyUnforgeableLinesMatch(self) -> None:
        import configparser
        import re

        parser = configparser.ConfigParser(interpolation=None)
        parser.read(os.path.join(REPOSITORY, "etc", "fail2ban", "sig2knock.conf"))
        # fail2ban's <HOST>, as far as these addresses need it.
        pattern = re.compile(parser.get("Definition", "failregex").replace(
            "<HOST>", r"(?P<host>[0-9A-Fa-f:.]+)"))
        hosts = [match.group("host") for match in map(pattern.search, self.lines()) if match]
        self.assertEqual(hosts, ["198.18.0.9", "2001:2::9"])
