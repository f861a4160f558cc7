"""
Tests for sig2knock.daemon.users: the users file, its lines and its permissions. The file holds
public keys only: a password user's is derived for this server, a key user's is their own.
"""

import base64
import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon import users
from sig2knock.daemon.users import UsersError, format_user_line, load_users, parse_users
from sig2knock.protocol import keys
from sig2knock.protocol.kdf import KdfParams, derive_key
from sig2knock.protocol.keyline import format_key_line
from sig2knock.test.common import CHEAP_KDF, SERVER_PUBLIC, write_users
from sig2knock.test.properties import given, settings, st


PATH = "/etc/sig2knock/user.txt"
ALICE_PASSWORD = "alice's password"
BOB_PASSWORD = "bob's passphrase"
# Computed once: each line costs a (cheap) scrypt.
ALICE_LINE = format_user_line("alice", ALICE_PASSWORD, SERVER_PUBLIC, CHEAP_KDF)
BOB_LINE = format_user_line("bob", BOB_PASSWORD, SERVER_PUBLIC, CHEAP_KDF)


def public_of(password: str, user: str, server: bytes = SERVER_PUBLIC) -> bytes:
    seed = derive_key(password, user, server, CHEAP_KDF)
    return keys.public_bytes(keys.private_from_seed(seed))


ALICE_PUBLIC = public_of(ALICE_PASSWORD, "alice")
BOB_PUBLIC = public_of(BOB_PASSWORD, "bob")
CAROL_LINE = format_key_line("carol", keys.public_bytes(keys.generate()), None)


class UsersErrorAssertions:
    """
    Checks of users file errors: one line, naming the file and line.
    """

    def assertUsersError(self, text: str, line: int) -> UsersError:
        error = self.assertRaises(UsersError, parse_users, text, PATH)  # type: ignore
        message = str(error)
        self.assertTrue(  # type: ignore
            message.startswith(f"{PATH}:{line}: "), f"{message!r} does not name {PATH}:{line}"
        )
        self.assertNotIn("\n", message)  # type: ignore
        return error


class FormatTests(SynchronousTestCase):
    """
    format_user_line writes ``NAME:scrypt:n=..,r=..,p=..:KEY`` and parse_users reads it back.
    """

    def test_roundTrip(self) -> None:
        users = parse_users(ALICE_LINE + "\n" + CAROL_LINE + "\n", PATH)
        self.assertEqual(users.names(), ["alice", "carol"])
        entry = users.entries["alice"]
        self.assertEqual(entry.line.public, ALICE_PUBLIC)
        self.assertEqual(entry.line.params, CHEAP_KDF)
        self.assertEqual(keys.public_bytes(users.public_key("alice")), ALICE_PUBLIC)
        self.assertIsNone(users.entries["carol"].line.params)
        self.assertIsNone(users.public_key("mallory"))

    def test_withdrawn(self) -> None:
        """
        The users a newer file takes away: removed, or with another key; not the new ones.
        """
        older = parse_users(ALICE_LINE + "\n" + CAROL_LINE + "\n", PATH)
        rekeyed = format_key_line("carol", public_of("carol's new password", "carol"), CHEAP_KDF)
        newer = parse_users(rekeyed + "\n" + format_key_line(
            "dave", public_of("dave's password", "dave"), CHEAP_KDF) + "\n", PATH)
        self.assertEqual(older.withdrawn(newer), ["alice", "carol"])
        self.assertEqual(older.withdrawn(older), [])
        self.assertEqual(newer.withdrawn(older), ["carol", "dave"])

    def test_lineFormat(self) -> None:
        self.assertEqual(
            ALICE_LINE,
            "alice:scrypt:n=1024,r=1,p=1:" + base64.b64encode(ALICE_PUBLIC).decode(),
        )

    def test_perServer(self) -> None:
        """
        The same name and password give another key at another server.
        """
        other = keys.public_bytes(keys.generate())
        self.assertNotEqual(
            format_user_line("alice", ALICE_PASSWORD, other, CHEAP_KDF), ALICE_LINE
        )

    def test_defaultParams(self) -> None:
        line = format_user_line("alice", ALICE_PASSWORD, SERVER_PUBLIC, KdfParams(n=2048))
        self.assertIn(":scrypt:n=2048,r=8,p=1:", line)

    def test_commentsAndBlankLinesSkipped(self) -> None:
        text = f"# users\n\n   \n{ALICE_LINE}\n  # bob left\n{BOB_LINE}\n"
        self.assertEqual(parse_users(text, PATH).names(), ["alice", "bob"])

    def test_noUsers(self) -> None:
        users = parse_users("# nobody yet\n", PATH)
        self.assertEqual(len(users), 0)
        self.assertEqual(users.names(), [])


class ParseErrorTests(SynchronousTestCase, UsersErrorAssertions):
    """
    Every problem names the file and line.
    """

    def test_duplicateUserNamesBothLines(self) -> None:
        text = f"{ALICE_LINE}\n{BOB_LINE}\n{ALICE_LINE}\n"
        error = self.assertUsersError(text, 3)
        self.assertIn("user alice is defined twice, on lines 1 and 3", str(error))

    def test_sameKeyForTwoUsers(self) -> None:
        copy = "mallory" + ALICE_LINE[len("alice"):]
        error = self.assertUsersError(f"{ALICE_LINE}\n{copy}\n", 2)
        self.assertIn("user mallory has the same key as user alice", str(error))

    def test_badLines(self) -> None:
        for line in (
            "alice:scrypt:n=1024,r=1,p=1",
            "alice:scrypt:n=1000,r=1,p=1:" + ALICE_LINE.rsplit(":", 1)[1],
            "alice:x25519:!!",
            "al ice:x25519:" + ALICE_LINE.rsplit(":", 1)[1],
            "alice:x25519:" + base64.b64encode(bytes(32)).decode(),  # not a usable key
        ):
            with self.subTest(line=line):
                self.assertUsersError(f"# first\n{line}\n", 2)

    def test_versionOneLineRefusedWithTheFix(self) -> None:
        line = "alice:scrypt:n=1024,r=1,p=1:c2lnMmtub2NrL3YxL3VzZXI6YWxpY2U=:" + "A" * 44
        error = self.assertUsersError(line + "\n", 1)
        self.assertIn("version 1", str(error))
        self.assertIn("sig2knockd_useradd", str(error))


class PermissionsTests(SynchronousTestCase):
    """
    Like sshd's StrictModes, a users file must be a regular file owned by the daemon's user and
    closed to group and others.
    """

    def users_file(self, mode: int = 0o600) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "user.txt")
        write_users(path, {"alice": ALICE_PASSWORD}, mode)
        return path

    def test_directoryOthersCanChangeRefused(self) -> None:
        """
        A users file in a directory others may write to (not sticky) could be replaced by
        theirs: refused, naming the directory (sshd's StrictModes checks the same).
        """
        path = self.users_file()
        directory = os.path.dirname(os.path.abspath(path))
        os.chmod(directory, 0o777)
        error = self.assertRaises(UsersError, load_users, path)
        self.assertIn(f"{directory} (above {path}) is writable by group or others", str(error))
        os.chmod(directory, 0o755)
        load_users(path)

    def test_privateFileAccepted(self) -> None:
        path = self.users_file()
        self.assertEqual(load_users(path).names(), ["alice"])
        self.assertEqual(load_users(path, uid=os.geteuid()).names(), ["alice"])

    def test_ownerExecutableAccepted(self) -> None:
        self.assertEqual(load_users(self.users_file(0o700)).names(), ["alice"])

    def test_openToGroupOrOthers(self) -> None:
        for mode in (0o640, 0o604, 0o660, 0o602, 0o620, 0o644):
            with self.subTest(mode=oct(mode)):
                path = self.users_file(mode)
                error = self.assertRaises(UsersError, load_users, path)
                self.assertIn("chmod 600", str(error))
                self.assertIn(path, str(error))
                self.assertNotIn("\n", str(error))

    def test_otherOwner(self) -> None:
        path = self.users_file()
        error = self.assertRaises(UsersError, load_users, path, uid=os.geteuid() + 12345)
        self.assertIn("chown", str(error))
        self.assertIn(path, str(error))
        self.assertIn(str(os.geteuid() + 12345), str(error))

    def test_missingFile(self) -> None:
        path = os.path.join(os.path.abspath(self.mktemp()), "user.txt")
        error = self.assertRaises(UsersError, load_users, path)
        self.assertIn(f"sig2knockd_useradd --users-file {path}", str(error))

    def test_directory(self) -> None:
        path = self.mktemp()
        os.makedirs(path)
        os.chmod(path, 0o700)
        error = self.assertRaises(UsersError, load_users, path)
        self.assertIn(path, str(error))

    def test_nulInPath(self) -> None:
        """
        A path the system cannot take (USERS_FILE with a NUL character, which the configuration
        accepts) is a UsersError, not a ValueError escaping the daemon's error handling.
        """
        path = self.users_file() + "\0.bak"
        self.assertRaises(UsersError, load_users, path)


class LoadUsersTests(SynchronousTestCase):
    """
    load_users checks the permissions, then reads and parses the file.
    """

    def path(self) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        return os.path.join(directory, "user.txt")

    def test_loads(self) -> None:
        path = self.path()
        write_users(path, {"alice": ALICE_PASSWORD, "bob": BOB_PASSWORD})
        users = load_users(path)
        self.assertEqual(users.names(), ["alice", "bob"])
        self.assertEqual(users.entries["bob"].line.public, BOB_PUBLIC)
        self.assertEqual(users.path, path)

    def test_permissionsCheckedBeforeReading(self) -> None:
        path = self.path()
        write_users(path, {"alice": ALICE_PASSWORD}, mode=0o644)
        error = self.assertRaises(UsersError, load_users, path)
        self.assertIn("chmod 600", str(error))

    def test_otherOwnerRefused(self) -> None:
        path = self.path()
        write_users(path, {"alice": ALICE_PASSWORD})
        error = self.assertRaises(UsersError, load_users, path, uid=os.geteuid() + 12345)
        self.assertIn("chown", str(error))

    def test_emptyFile(self) -> None:
        """
        The empty users file the bootstrap creates loads, with no users.
        """
        path = self.path()
        with open(path, "w", encoding="utf-8"):
            pass
        os.chmod(path, 0o600)
        self.assertEqual(len(load_users(path)), 0)

    def test_notUtf8(self) -> None:
        path = self.path()
        with open(path, "wb") as users_file:
            users_file.write(b"# caf\xe9\n")
        os.chmod(path, 0o600)
        error = self.assertRaises(UsersError, load_users, path)
        self.assertIn(path, str(error))
        self.assertNotIn("\n", str(error))

    def test_parseErrorNamesFile(self) -> None:
        path = self.path()
        with open(path, "w", encoding="utf-8") as users_file:
            users_file.write(f"{ALICE_LINE}\nbroken\n")
        os.chmod(path, 0o600)
        error = self.assertRaises(UsersError, load_users, path)
        self.assertTrue(str(error).startswith(f"{path}:2: "))


BASE64 = st.binary(max_size=40).map(lambda data: base64.b64encode(data).decode("ascii"))
FIELDS = st.one_of(
    st.sampled_from(["alice", "bob", "scrypt", "n=1024,r=1,p=1", "n=1000,r=1,p=1", ""]),
    st.sampled_from(ALICE_LINE.split(":")),
    BASE64,
    st.text(max_size=12),
)


class PropertyTests(SynchronousTestCase):
    """
    Whatever the text, parse_users returns Users or raises a one-line UsersError.
    """

    def check(self, text: str) -> None:
        try:
            users = parse_users(text, PATH)
        except UsersError as error:
            self.assertNotIn("\n", str(error))
            self.assertNotIn("\r", str(error))
        else:
            self.assertEqual(len(users.names()), len(users))

    @given(st.text())
    @settings(max_examples=2000, deadline=None)
    def test_randomText(self, text: str) -> None:
        self.check(text)

    @given(st.lists(st.lists(FIELDS, min_size=1, max_size=7).map(":".join), max_size=5))
    @settings(max_examples=2000, deadline=None)
    def test_randomFields(self, lines) -> None:
        self.check("\n".join(lines))


class RootOwnedForGroupTests(SynchronousTestCase):
    """
    A users file root owns and only the daemon's group reads (root:GROUP 0640) is accepted:
    the daemon reads it and cannot rewrite it. Anything looser, or another group, is not.
    """

    def status(self, mode: int, uid: int = 0, gid: int = 123) -> os.stat_result:
        return os.stat_result((stat.S_IFREG | mode, 1, 1, 1, uid, gid, 0, 0, 0, 0))

    def test_accepted(self) -> None:
        for mode in (0o640, 0o440, 0o600 | 0o040):
            self.assertTrue(users.root_owned_for_group(self.status(mode), 123), oct(mode))

    def test_refused(self) -> None:
        for status, gid in (
            (self.status(0o660), 123),  # the group could rewrite it
            (self.status(0o644), 123),  # others read it
            (self.status(0o600), 123),  # the group cannot read it: nothing to accept
            (self.status(0o640), 124),  # another group reads it
            (self.status(0o640, gid=0), 0),  # root's group: not a service group
            (self.status(0o640, uid=1000), 123),  # not root's
            (os.stat_result((stat.S_IFDIR | 0o750, 1, 1, 1, 0, 123, 0, 0, 0, 0)), 123),
        ):
            self.assertFalse(users.root_owned_for_group(status, gid), status)
