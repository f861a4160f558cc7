"""
Tests for sig2knock.client.servers and the client's ``--import``, ``--invite`` and ``NAME``: servers
configured once, knocked on by name.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.client.servers import (
    ServersError,
    find_server,
    load_servers,
    save_server,
)
from sig2knock.protocol.invitation import Invitation
from sig2knock.test.common import CHEAP_KDF, PASSWORD, SERVER_PUBLIC, run_module
from sig2knock.test.loopback_server import LoopbackServer

CLIENT = "sig2knock.scripts.client"


class ServersFileTests(SynchronousTestCase):
    """
    Sections are added, replaced and read back; a broken file says where.
    """

    def setUp(self) -> None:
        self.path = os.path.join(os.path.abspath(self.mktemp()), "servers.conf")
        os.makedirs(os.path.dirname(self.path))

    def test_saveAndLoad(self) -> None:
        one = Invitation("198.18.0.1", 1001, SERVER_PUBLIC, "alice", CHEAP_KDF)
        two = Invitation("server.example.org", 2002, SERVER_PUBLIC, "bob", None, "rdp")
        save_server(self.path, "one", one)
        save_server(self.path, "two", two)
        save_server(self.path, "one", one._replace(port=1003))
        servers = load_servers(self.path)
        self.assertEqual(servers, {"one": one._replace(port=1003), "two": two})
        self.assertEqual(find_server(servers, "server.example.org", 2002), ("two", two))
        self.assertIsNone(find_server(servers, "server.example.org", 1001))
        self.assertEqual(load_servers(self.path + ".missing"), {})

    def test_brokenRefused(self) -> None:
        with open(self.path, "w", encoding="utf-8") as broken:
            broken.write("[one]\nhost = h\n")
        error = self.assertRaises(ServersError, load_servers, self.path)
        self.assertIn("[one] has no", str(error))
        self.assertRaises(ServersError, save_server, self.path, "a]b",
                          Invitation("h", 1, SERVER_PUBLIC, "alice", None))


class ConfiguredServerCommandTests(SynchronousTestCase):
    """
    ``sig2knockc --import`` stores a server, then ``sig2knockc NAME`` (and ``SERVER PORT``
    without ``--server-key``) knocks on it; ``--invite`` knocks without storing anything.
    """

    def setUp(self) -> None:
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.env = {"XDG_CONFIG_HOME": self.home}

    def client(self, *arguments: str, stdin: str = PASSWORD + "\n"):
        return run_module(CLIENT, list(arguments), stdin=stdin, env=self.env)

    def test_importThenKnockByName(self) -> None:
        server = LoopbackServer(grant_port=45701)
        self.addCleanup(server.stop)
        invitation = Invitation("127.0.0.1", server.port, SERVER_PUBLIC, "alice", CHEAP_KDF)
        stored = self.client("--import", invitation.format(), "--name", "lab", stdin="")
        self.assertEqual(stored.returncode, 0, stored.stderr)
        self.assertIn("sig2knockc lab", stored.stderr)
        by_name = self.client("lab", "--password-stdin")
        self.assertEqual((by_name.returncode, by_name.stdout), (0, "45701\n"), by_name.stderr)
        by_address = self.client("127.0.0.1", str(server.port), "--password-stdin")
        self.assertEqual((by_address.returncode, by_address.stdout), (0, "45701\n"),
                         by_address.stderr)
        unknown = self.client("elsewhere", "--password-stdin")
        self.assertEqual(unknown.returncode, 2)
        self.assertIn("--import", unknown.stderr)

    def test_serviceStoredAndAskedFor(self) -> None:
        """
        ``--import ... --service rdp`` stores the service with the server; knocking by name
        asks for it in P1, ``--service`` on the command line asks for another (``default``:
        the default one), ``SERVER PORT`` asks for the default, and a name that cannot be a
        service's is a usage error.
        """
        server = LoopbackServer(grant_port=45703)
        self.addCleanup(server.stop)
        invitation = Invitation("127.0.0.1", server.port, SERVER_PUBLIC, "alice", CHEAP_KDF)
        stored = self.client("--import", invitation.format(), "--name", "rdp-at-lab",
                             "--service", "rdp", stdin="")
        self.assertEqual(stored.returncode, 0, stored.stderr)
        self.assertIn("service rdp", stored.stderr)
        for arguments, asked in ((["rdp-at-lab"], "rdp"),
                                 (["rdp-at-lab", "--service", "db"], "db")):
            done = self.client(*arguments, "--password-stdin")
            self.assertEqual((done.returncode, done.stdout), (0, "45703\n"), done.stderr)
            self.assertEqual(server.requests[-1].service, asked)
        for arguments in (["--invite", invitation.format()],
                          # SERVER PORT finds the stored entry's key, not its service.
                          ["127.0.0.1", str(server.port)],
                          ["rdp-at-lab", "--service", "default"]):
            default = self.client(*arguments, "--password-stdin")
            self.assertEqual(default.returncode, 0, default.stderr)
            self.assertEqual(server.requests[-1].service, "", arguments)
        bad = self.client("rdp-at-lab", "--service", "RDP!", "--password-stdin")
        self.assertEqual(bad.returncode, 2)
        self.assertIn("--service: service name 'RDP!' is not valid", bad.stderr)

    def test_invite(self) -> None:
        server = LoopbackServer(grant_port=45702)
        self.addCleanup(server.stop)
        invitation = Invitation("127.0.0.1", server.port, SERVER_PUBLIC, "alice", CHEAP_KDF)
        done = self.client("--invite", invitation.format(), "--password-stdin")
        self.assertEqual((done.returncode, done.stdout), (0, "45702\n"), done.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.home, "sig2knock", "servers.conf")))
