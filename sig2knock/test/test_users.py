"""
Tests for sig2knock.daemon.users: the users file, its lines and its permissions.
"""

import base64
import os

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon.users import UsersError, format_user_line, load_users, parse_users
from sig2knock.protocol import kdf
from sig2knock.protocol.kdf import KdfParams, derive_key, salt_for
from sig2knock.test.common import CHEAP_KDF, write_users
from sig2knock.test.properties import given, settings, st


PATH = "/etc/sig2knock/user.txt"
ALICE_PASSWORD = "alice's password"
BOB_PASSWORD = "bob's passphrase"
# Computed once: each line costs a (cheap) scrypt.
ALICE_LINE = format_user_line("alice", ALICE_PASSWORD, CHEAP_KDF)
BOB_LINE = format_user_line("bob", BOB_PASSWORD, CHEAP_KDF)
ALICE_KEY = derive_key(ALICE_PASSWORD, "alice", CHEAP_KDF)
BOB_KEY = derive_key(BOB_PASSWORD, "bob", CHEAP_KDF)
ALICE_KEY_TEXT = ALICE_LINE.rsplit(":", 1)[1]


def replace_field(line: str, index: int, value: str) -> str:
    fields = line.split(":")
    fields[index] = value
    return ":".join(fields)


class UsersErrorAssertions:
    """
    Checks of users file errors: one line, naming the file and line, without key material.
    """

    def assertUsersError(self, text: str, line: int, secret: str = ALICE_KEY_TEXT) -> UsersError:
        error = self.assertRaises(UsersError, parse_users, text, PATH)  # type: ignore
        message = str(error)
        self.assertTrue(  # type: ignore
            message.startswith(f"{PATH}:{line}: "), f"{message!r} does not name {PATH}:{line}"
        )
        self.assertNotIn("\n", message)  # type: ignore
        self.assertNotIn(secret, message)  # type: ignore
        return error


class FormatTests(SynchronousTestCase):
    """
    format_user_line writes ``NAME:scrypt:n=..,r=..,p=..:SALT:KEY`` and parse_users reads it back.
    """

    def test_roundTrip(self) -> None:
        users = parse_users(ALICE_LINE + "\n", PATH)
        self.assertEqual(users.names(), ["alice"])
        entry = users.entries["alice"]
        self.assertEqual(entry.user.name, "alice")
        self.assertEqual(entry.user.key, derive_key(ALICE_PASSWORD, "alice", CHEAP_KDF))
        self.assertEqual(entry.params, CHEAP_KDF)
        self.assertEqual(entry.line, 1)
        self.assertEqual(users.path, PATH)

    def test_roundTripOtherParams(self) -> None:
        params = KdfParams(n=2048, r=2, p=2)
        line = format_user_line("carol.d@example", "carol's password", params)
        entry = parse_users(line, PATH).entries["carol.d@example"]
        self.assertEqual(entry.params, params)
        self.assertEqual(entry.user.key, derive_key("carol's password", "carol.d@example", params))

    def test_lineFormat(self) -> None:
        fields = ALICE_LINE.split(":")
        self.assertEqual(len(fields), 5)
        name, kdf_name, params, salt, key = fields
        self.assertEqual(name, "alice")
        self.assertEqual(f"{kdf_name}:{params}", "scrypt:n=1024,r=1,p=1")
        self.assertEqual(base64.b64decode(salt, validate=True), salt_for("alice"))
        self.assertEqual(base64.b64decode(key, validate=True), ALICE_KEY)
        self.assertNotIn("\n", ALICE_LINE)

    def test_saltAsDocumented(self) -> None:
        """
        The salt field is the one the README shows for alice: a client computes it offline.
        """
        self.assertEqual(ALICE_LINE.split(":")[3], "c2lnMmtub2NrL3YxL3VzZXI6YWxpY2U=")

    def test_defaultParams(self) -> None:
        """
        Without params a line records the default scrypt cost (the one costly derivation here).
        """
        line = format_user_line("alice", ALICE_PASSWORD)
        self.assertEqual(":".join(line.split(":")[1:3]), "scrypt:n=32768,r=8,p=1")
        self.assertEqual(parse_users(line, PATH).entries["alice"].params, KdfParams())

    def test_invalidNameRefused(self) -> None:
        self.assertRaises(kdf.KdfError, format_user_line, "al:ice", ALICE_PASSWORD, CHEAP_KDF)


class ParseTests(SynchronousTestCase, UsersErrorAssertions):
    """
    parse_users reads every user line, skipping comments and blank lines.
    """

    def test_commentsAndBlankLinesSkipped(self) -> None:
        text = f"# users of this host\n\n{ALICE_LINE}\n   \n  # bob, added later\n  {BOB_LINE}  \n"
        users = parse_users(text, PATH)
        self.assertEqual(len(users), 2)
        self.assertEqual(users.names(), ["alice", "bob"])
        self.assertEqual(users.entries["alice"].line, 3)
        self.assertEqual(users.entries["bob"].line, 6)

    def test_byKeyId(self) -> None:
        users = parse_users(f"{ALICE_LINE}\n{BOB_LINE}\n", PATH)
        self.assertEqual(len(users.by_key_id), 2)
        for name, key in (("alice", ALICE_KEY), ("bob", BOB_KEY)):
            user = users.by_key_id[kdf.key_id(key)]
            self.assertIs(user, users.entries[name].user)
            self.assertEqual((user.name, user.key), (name, key))

    def test_noUsers(self) -> None:
        users = parse_users("# no users yet\n\n", PATH)
        self.assertEqual(len(users), 0)
        self.assertEqual(users.names(), [])
        self.assertEqual(users.by_key_id, {})
        self.assertEqual(len(parse_users("", PATH)), 0)

    def test_duplicateUserNamesBothLines(self) -> None:
        other_alice = format_user_line("alice", "another password", CHEAP_KDF)
        text = f"{ALICE_LINE}\n{BOB_LINE}\n# again\n{other_alice}\n"
        error = self.assertUsersError(text, 4, secret=other_alice.rsplit(":", 1)[1])
        message = str(error)[len(PATH):]
        self.assertIn("alice", message)
        self.assertRegex(message, r"\b1\b")
        self.assertRegex(message, r"\b4\b")
        self.assertNotIn(ALICE_KEY_TEXT, str(error))

    def test_sameKeyForTwoUsers(self) -> None:
        """
        A line whose key was copied from another user's line is refused.
        """
        copied = replace_field(BOB_LINE, 4, ALICE_KEY_TEXT)
        error = self.assertUsersError(f"{ALICE_LINE}\n{copied}\n", 2)
        self.assertIn("alice", str(error))

    def test_wrongFieldCount(self) -> None:
        fields = ALICE_LINE.split(":")
        for line in (
            ":".join(fields[:3] + fields[4:]),  # no salt
            ":".join(fields[1:]),  # no name
            ALICE_LINE + ":extra",
            ALICE_KEY_TEXT,
            "alice",
        ):
            with self.subTest(line=line):
                self.assertUsersError(f"# users\n{BOB_LINE}\n{line}\n", 3)

    def test_badKdfParams(self) -> None:
        for params in ("n=1000,r=1,p=1", "n=512,r=1,p=1", "n=1024,r=0,p=1", "n=1024", "x"):
            with self.subTest(params=params):
                line = replace_field(ALICE_LINE, 2, params)
                self.assertUsersError(f"# users\n{BOB_LINE}\n{line}\n", 3)
        line = replace_field(ALICE_LINE, 1, "bcrypt")
        self.assertUsersError(f"# users\n{BOB_LINE}\n{line}\n", 3)

    def test_badBase64(self) -> None:
        bad_key = ALICE_KEY_TEXT[:-4] + "*==="
        error = self.assertUsersError(
            f"# users\n{BOB_LINE}\n{replace_field(ALICE_LINE, 4, bad_key)}\n", 3, secret=bad_key
        )
        self.assertIn("base64", str(error))
        self.assertUsersError(f"# users\n{BOB_LINE}\n{replace_field(ALICE_LINE, 3, 'salt!')}\n", 3)
        unpadded = ALICE_KEY_TEXT.rstrip("=")
        self.assertUsersError(
            f"# users\n{BOB_LINE}\n{replace_field(ALICE_LINE, 4, unpadded)}\n", 3, secret=unpadded
        )

    def test_keyOfWrongLength(self) -> None:
        for key in (ALICE_KEY[:31], ALICE_KEY + b"\0", b""):
            with self.subTest(size=len(key)):
                key_text = base64.b64encode(key).decode("ascii")
                line = replace_field(ALICE_LINE, 4, key_text)
                text = f"# users\n{BOB_LINE}\n{line}\n"
                error = self.assertUsersError(text, 3, secret=key_text or ALICE_KEY_TEXT)
                self.assertIn("32", str(error))

    def test_invalidUserName(self) -> None:
        for name in ("-alice", ".alice", "al ice", "", "a" * 65, "alicé"):
            with self.subTest(name=name):
                line = replace_field(ALICE_LINE, 0, name)
                self.assertUsersError(f"# users\n{BOB_LINE}\n{line}\n", 3)

    def test_renamedLine(self) -> None:
        """
        A line whose name was edited keeps the old name's salt; the error says to make a new line.
        """
        line = replace_field(ALICE_LINE, 0, "mallory")
        error = self.assertUsersError(f"{BOB_LINE}\n{line}\n", 2)
        self.assertIn("sig2knockd_useradd", str(error))
        self.assertIn("mallory", str(error))

    def test_damagedLinesNeverShowKey(self) -> None:
        """
        Whatever part of a line is damaged, the message quotes no key text.
        """
        fields = ALICE_LINE.split(":")
        damaged = [
            ":".join(fields[:index] + fields[index + 1:]) for index in range(5)
        ] + [
            ":".join(fields[:3] + [fields[4], fields[3]]),  # salt and key swapped
            ":".join(fields + [fields[4]]),  # key twice
            ":".join(fields[:4] + [fields[4][:20]]),  # key cut short
            ":".join(fields[:4] + [fields[4][:20] + " " + fields[4][20:]]),
            ":".join(fields[:4] + [fields[4][:20]]) + ":",
        ]
        for line in damaged:
            with self.subTest(line=line):
                error = self.assertUsersError(f"{line}\n", 1)
                self.assertNotIn(fields[4][:20], str(error))


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
        self.assertEqual(users.entries["bob"].user.key, BOB_KEY)
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
            self.assertEqual(len(users.by_key_id), len(users))

    @given(st.text())
    @settings(max_examples=2000, deadline=None)
    def test_randomText(self, text: str) -> None:
        self.check(text)

    @given(st.lists(st.lists(FIELDS, min_size=1, max_size=7).map(":".join), max_size=5))
    @settings(max_examples=2000, deadline=None)
    def test_randomFields(self, lines) -> None:
        self.check("\n".join(lines))
