"""
Tests for sig2knock.scripts.useradd, as an operator runs ``sig2knockd_useradd`` (a subprocess):
it makes lines the daemon accepts and never shows the password.
"""

import os
import stat
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon.users import load_users, parse_users
from sig2knock.protocol import keys
from sig2knock.protocol.kdf import KdfParams, derive_key
from sig2knock.test.common import (
    CHEAP_KDF,
    PASSWORD,
    SERVER_KEY_TEXT,
    SERVER_PUBLIC,
    run_module,
    write_config,
)


USERADD = "sig2knock.scripts.useradd"


def useradd(*arguments: str, stdin: str = PASSWORD + "\n") -> subprocess.CompletedProcess:
    """
    Run ``sig2knockd_useradd ARGUMENTS`` with a cheap KDF for the tests' server, the password
    on standard input.
    """
    return run_module(
        USERADD,
        ["--kdf", CHEAP_KDF.format(), "--allow-weak-kdf", "--server-key", SERVER_KEY_TEXT,
         *arguments],
        stdin=stdin,
    )


def public_of(password: str, user: str, params: KdfParams = CHEAP_KDF) -> bytes:
    seed = derive_key(password, user, SERVER_PUBLIC, params)
    return keys.public_bytes(keys.private_from_seed(seed))


class UserAddTests(SynchronousTestCase):
    """
    ``sig2knockd_useradd`` makes lines the daemon accepts and never shows the password.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.users_path = os.path.join(self.directory, "user.txt")

    def assertPasswordHidden(self, result: subprocess.CompletedProcess) -> None:
        self.assertNotIn(PASSWORD, result.stdout + result.stderr)

    def test_printsLine(self) -> None:
        """
        With default parameters the printed line holds the public half of the key pair that
        scrypt(password) gives at this server, and the daemon reads it.
        """
        result = run_module(
            USERADD,
            ["--password-stdin", "--server-key", SERVER_KEY_TEXT, "alice"],
            stdin=PASSWORD + "\n",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertPasswordHidden(result)
        self.assertEqual(result.stdout.count("\n"), 1)
        entry = parse_users(result.stdout, "<stdout>").entries["alice"]
        self.assertEqual(entry.line.params, KdfParams())
        self.assertEqual(entry.line.public, public_of(PASSWORD, "alice", KdfParams()))

    def test_serverFromTheConfiguration(self) -> None:
        """
        With -c, the key is made for that daemon's identity and appended to its USERS_FILE.
        """
        config = write_config(self.directory)
        result = run_module(
            USERADD,
            ["-c", config, "--kdf", CHEAP_KDF.format(), "--allow-weak-kdf", "--password-stdin",
             "bob"],
            stdin=PASSWORD + "\n",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        users = load_users(self.users_path)
        self.assertEqual(users.names(), ["alice", "bob"])
        self.assertEqual(users.entries["bob"].line.public, public_of(PASSWORD, "bob"))

    def test_invitationIsTheLastLine(self) -> None:
        """
        ``-c CONFIG --host HOST`` appends the user and prints, as the last line of standard
        output, an invitation with the host, the control port, the server's key, the user and
        the KDF parameters; nothing secret.
        """
        from sig2knock.protocol.invitation import Invitation, parse_invitation

        config = write_config(self.directory)
        result = run_module(
            USERADD,
            ["-c", config, "--host", "server.example.org", "--kdf", CHEAP_KDF.format(),
             "--allow-weak-kdf", "--password-stdin", "bob"],
            stdin=PASSWORD + "\n",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        last = result.stdout.strip().splitlines()[-1]
        self.assertEqual(
            parse_invitation(last),
            Invitation("server.example.org", 1001, SERVER_PUBLIC, "bob", CHEAP_KDF),
        )
        self.assertPasswordHidden(result)
        self.assertEqual(load_users(self.users_path).names(), ["alice", "bob"])
        no_config = run_module(USERADD, ["--server-key", SERVER_KEY_TEXT, "--host", "h",
                                         "--password-stdin", "carol"], stdin=PASSWORD + "\n")
        self.assertEqual(no_config.returncode, 1)
        self.assertIn("give -c", no_config.stderr)

    def test_invitationForANamedService(self) -> None:
        """
        ``--service NAME`` puts the service into the invitation; a service the configuration
        does not define is refused before anything is appended, and a user its ALLOW does not
        admit yet is warned about.
        """
        from sig2knock.protocol.invitation import parse_invitation

        config = write_config(self.directory)
        with open(config, "a", encoding="utf-8") as config_file:
            config_file.write("[service rdp]\nFORWARD_TO_IP = 10.0.0.5\nFORWARD_TO_PORT = 3389\n"
                              "ALLOW = bob\n")

        def add(user: str, service: str):  # type: ignore[no-untyped-def]
            return run_module(
                USERADD,
                ["-c", config, "--host", "h", "--service", service, "--kdf", CHEAP_KDF.format(),
                 "--allow-weak-kdf", "--password-stdin", user],
                stdin=PASSWORD + "\n",
            )

        bob = add("bob", "rdp")
        self.assertEqual(bob.returncode, 0, bob.stderr)
        self.assertEqual(parse_invitation(bob.stdout.splitlines()[-1]).service, "rdp")
        self.assertNotIn("warning", bob.stderr)
        carol = add("carol", "rdp")
        self.assertIn("warning: carol may not reach service rdp yet (its ALLOW: bob)",
                      carol.stderr)
        missing = add("dave", "db")
        self.assertEqual(missing.returncode, 1)
        self.assertIn("no [service db]", missing.stderr)
        self.assertEqual(load_users(self.users_path).names(), ["alice", "bob", "carol"])

    def test_aServerIsNeeded(self) -> None:
        result = run_module(USERADD, ["--password-stdin", "alice"], stdin=PASSWORD + "\n")
        self.assertEqual(result.returncode, 1)
        self.assertIn("give -c CONFIG", result.stderr)

    def test_publicKeyUser(self) -> None:
        """
        ``--public-key`` enrols a user with their own key pair: no password, and the line
        holds exactly that key.
        """
        own = keys.generate()
        result = run_module(
            USERADD,
            ["--public-key", keys.format_public_key(keys.public_bytes(own)), "carol"],
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        entry = parse_users(result.stdout, "<stdout>").entries["carol"]
        self.assertEqual((entry.line.kind, entry.line.public), ("x25519", keys.public_bytes(own)))
        bad = run_module(USERADD, ["--public-key", "A" * 43 + "=", "carol"])
        self.assertEqual(bad.returncode, 1)
        self.assertIn("not a usable X25519 public key", bad.stderr)

    def test_appendsToNewPrivateFile(self) -> None:
        for user in ("alice", "bob"):
            result = useradd("--password-stdin", "--users-file", self.users_path, user)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(result.stdout, "")
            self.assertPasswordHidden(result)
        self.assertEqual(stat.S_IMODE(os.stat(self.users_path).st_mode), 0o600)
        users = load_users(self.users_path)
        self.assertEqual(users.names(), ["alice", "bob"])
        self.assertEqual(users.entries["bob"].line.public, public_of(PASSWORD, "bob"))

    def test_appendAfterLineWithoutNewline(self) -> None:
        self.assertEqual(useradd("--password-stdin", "alice").returncode, 0)
        line = useradd("--password-stdin", "alice").stdout.strip()
        with open(self.users_path, "w") as users_file:
            users_file.write(line)
        os.chmod(self.users_path, 0o600)
        result = useradd("--password-stdin", "--users-file", self.users_path, "bob")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(load_users(self.users_path).names(), ["alice", "bob"])

    def test_duplicateRefused(self) -> None:
        useradd("--password-stdin", "--users-file", self.users_path, "alice")
        result = useradd("--password-stdin", "--users-file", self.users_path, "alice")
        self.assertEqual(result.returncode, 1)
        self.assertIn("already there", result.stderr)
        self.assertEqual(load_users(self.users_path).names(), ["alice"])

    def test_openFileRefused(self) -> None:
        useradd("--password-stdin", "--users-file", self.users_path, "alice")
        os.chmod(self.users_path, 0o644)
        result = useradd("--password-stdin", "--users-file", self.users_path, "bob")
        self.assertEqual(result.returncode, 1)
        self.assertIn("chmod 600", result.stderr)

    def test_weakKdfNeedsToBeAsked(self) -> None:
        """
        A ``--kdf`` below the default cost is refused unless ``--allow-weak-kdf`` is given;
        the default and stronger costs need nothing.
        """
        refused = run_module(
            USERADD, ["--kdf", CHEAP_KDF.format(), "--server-key", SERVER_KEY_TEXT,
                      "--password-stdin", "bob"], stdin=PASSWORD + "\n")
        self.assertEqual((refused.returncode, refused.stdout), (1, ""))
        self.assertIn("--allow-weak-kdf", refused.stderr)
        self.assertIn("costs less memory than the default scrypt:n=32768,r=8,p=1", refused.stderr)
        strong = run_module(
            USERADD, ["--kdf", "scrypt:n=32768,r=16,p=1", "--server-key", SERVER_KEY_TEXT,
                      "--password-stdin", "bob"], stdin=PASSWORD + "\n")
        self.assertEqual(strong.returncode, 0, strong.stderr)
        self.assertIn("scrypt:n=32768,r=16,p=1", strong.stdout)

    def test_shortPasswordRefused(self) -> None:
        for password in ("", "short"):
            result = useradd("--password-stdin", "alice", stdin=password + "\n")
            self.assertEqual(result.returncode, 1)
            self.assertIn("at least 8 characters", result.stderr)
            self.assertEqual(result.stdout, "")

    def test_noTerminal(self) -> None:
        result = useradd("alice", stdin="")
        self.assertEqual(result.returncode, 1)
        self.assertIn("--password-stdin", result.stderr)

    def test_badUserName(self) -> None:
        result = useradd("--password-stdin", "al:ice")
        self.assertEqual(result.returncode, 1)
        self.assertIn("not valid", result.stderr)

    def test_missingDirectory(self) -> None:
        missing = os.path.join(self.directory, "no", "user.txt")
        result = useradd("--password-stdin", "--users-file", missing, "alice")
        self.assertEqual(result.returncode, 1)
        self.assertNotIn("Traceback", result.stderr)
        self.assertIn("No such file or directory", result.stderr)

    def test_usageError(self) -> None:
        self.assertEqual(useradd().returncode, 2)
