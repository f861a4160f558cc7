"""
The users file (``user.txt``): one line per user (``sig2knock.protocol.keyline``), for example::

    alice:scrypt:n=32768,r=8,p=1:q1Z...=
    bob:x25519:Vd3...=

It holds public keys only, so a stolen copy opens no door; but a password user's key lets a thief
test password guesses offline (at scrypt's cost each), so the daemon refuses the file unless it is
owned by the user running the daemon and closed to group and others.
"""

import os
import stat
from typing import Dict, List, NamedTuple, Optional

from sig2knock.daemon.text import one_line
from sig2knock.daemon.trusted_path import unsafe_parent, user_name
from sig2knock.protocol import files
from sig2knock.protocol import keys
from sig2knock.protocol.kdf import KdfParams, derive_key
from sig2knock.protocol.keyline import KeyLine, KeyLineError, format_key_line, parse_key_line


class UsersError(Exception):
    """
    The users file cannot be used; ``str()`` is one line naming the file (and line, where there is
    one) and never contains key material.
    """

    def __str__(self) -> str:
        return one_line(super().__str__())


class UserEntry(NamedTuple):
    """
    One user line: the user's public key (``key``, an ``EccKey``, and ``line.public``, its
    bytes), how a password user's was derived, and where it was read.
    """

    line: KeyLine
    key: object
    number: int

    @property
    def name(self) -> str:
        """
        The user name.
        """
        return self.line.name


class Users:
    """
    The users of a users file, by name; ``public_key(name)`` is what the control channel asks.
    """

    def __init__(self, path: str, entries: List[UserEntry]) -> None:
        self.path = path
        self.entries = {entry.name: entry for entry in entries}

    def public_key(self, name: str) -> Optional[object]:
        """
        The public key (an ``EccKey``) of user ``name``, or ``None`` for no such user.
        """
        entry = self.entries.get(name)
        return None if entry is None else entry.key

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> List[str]:
        """
        The user names, in file order.
        """
        return list(self.entries)

    def weak_kdf(self) -> List[str]:
        """
        The password users whose key was derived at less than the default cost.
        """
        return [
            name
            for name, entry in self.entries.items()
            if entry.line.params is not None and entry.line.params.weak
        ]

    def withdrawn(self, newer: "Users") -> List[str]:
        """
        The users of this file that ``newer`` no longer has, or has with another key.
        """
        return [
            name
            for name, entry in self.entries.items()
            if name not in newer.entries or newer.entries[name].line.public != entry.line.public
        ]


def format_user_line(
    user: str, password: str, server_public: bytes, params: KdfParams = KdfParams()
) -> str:
    """
    The users file line (without a newline) for ``user`` with ``password`` at the server whose
    public key is ``server_public``.
    """
    private = keys.private_from_seed(derive_key(password, user, server_public, params))
    return format_key_line(user, keys.public_bytes(private), params)


def _parse_line(text: str, path: str, number: int) -> UserEntry:
    try:
        line = parse_key_line(text)
        key = keys.import_public_key(line.public)
    except (KeyLineError, keys.KeyFormatError) as error:
        raise UsersError(f"{path}:{number}: {error}") from None
    return UserEntry(line, key, number)


def parse_users(text: str, path: str) -> Users:
    """
    Parse the text of a users file read from ``path``. Blank lines and ``#`` comments are skipped.
    """
    entries: List[UserEntry] = []
    seen: Dict[str, int] = {}
    publics: Dict[bytes, str] = {}
    # Split on newlines only (not splitlines()), so line numbers are the ones an editor shows.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry = _parse_line(line, path, number)
        if entry.name in seen:
            raise UsersError(
                f"{path}:{number}: user {entry.name} is defined twice, on lines"
                f" {seen[entry.name]} and {number}"
            )
        if entry.line.public in publics:
            raise UsersError(
                f"{path}:{number}: user {entry.name} has the same key as user"
                f" {publics[entry.line.public]}"
            )
        seen[entry.name] = number
        publics[entry.line.public] = entry.name
        entries.append(entry)
    return Users(path, entries)


SERVICE_GROUP = "sig2knock"


def service_gid() -> int:
    """
    The gid the daemon's users file may be read through when root checks it for the daemon
    (``--check-config``, ``sig2knockd_useradd``): the service group's, or root's own (which
    ``root_owned_for_group`` never accepts) when there is no such group.
    """
    import grp

    try:
        return grp.getgrnam(SERVICE_GROUP).gr_gid
    except KeyError:
        return 0


def root_owned_for_group(status: os.stat_result, gid: int) -> bool:
    """
    Whether ``status`` is a users file root owns and only its group ``gid``, a service group
    (not root's), may read (mode 0640 or 0440): the daemon reads it through that group, its
    own, and cannot rewrite it, so a daemon taken over cannot enrol users.
    """
    mode = stat.S_IMODE(status.st_mode)
    return (
        stat.S_ISREG(status.st_mode)
        and status.st_uid == 0
        and status.st_gid == gid != 0
        and mode & 0o040 != 0
        and not mode & 0o137
    )


def _check_status(path: str, status: os.stat_result, uid: int, gid: int) -> None:
    found = files.exposure(status, uid)
    if found is None or root_owned_for_group(status, gid):
        return
    if found.kind == files.NOT_REGULAR:
        raise UsersError(f"{path}: not a regular file")
    if found.kind == files.OTHER_OWNER:
        owner = user_name(found.owner)
        if uid == 0:
            # Checked as root for a daemon that probably runs as the file's owner.
            raise UsersError(
                f"{path}: owned by {owner}, and this runs as root; if the daemon runs as {owner},"
                f" check as that user: runuser -u {owner} -- sig2knockd --check-config; if it"
                f" runs as root, fix with: chown root {path}"
            )
        also = ""
        if found.owner == 0:
            also = f" (or keep it root's, read through the daemon's group: chmod 640 {path})"
        raise UsersError(
            f"{path}: owned by {owner}, but the daemon runs as"
            f" {user_name(uid)}; fix with: chown {user_name(uid)} {path}{also}"
        )
    raise UsersError(
        f"{path}: holds keys but is open to group or others (mode {found.mode:04o});"
        f" fix with: chmod 600 {path} (or, owned by root and read through the daemon's group:"
        f" chown root:GROUP {path} && chmod 640 {path})"
    )


def _missing(path: str) -> UsersError:
    return UsersError(
        f"{path}: no such file; create it with: sig2knockd_useradd --users-file {path}"
        " -c CONFIG USER"
    )


def load_users(path: str, uid: Optional[int] = None, gid: Optional[int] = None) -> Users:
    """
    Read and parse the users file at ``path``, after checking the very file opened: a regular
    file owned by ``uid`` (default: the effective user) and closed to group and others, the way
    sshd's StrictModes refuses key files, or owned by root and readable by group ``gid`` only
    (default: the effective group; ``root_owned_for_group``).
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise _missing(path) from None
    except (OSError, ValueError) as error:
        raise UsersError(f"{path!r}: cannot read it: {getattr(error, 'strerror', error)}") from None
    try:
        # Checked before it is wrapped: a directory cannot even be opened as a file object.
        status = os.fstat(descriptor)
        gid = os.getegid() if gid is None else gid
        uid = os.geteuid() if uid is None else uid
        _check_status(path, status, uid, gid)
        problem = unsafe_parent(path, uid)
        if problem is not None:
            raise UsersError(problem)
    except UsersError:
        os.close(descriptor)
        raise
    with os.fdopen(descriptor, "rb") as source:
        try:
            text = source.read().decode("utf-8")
        except OSError as error:
            raise UsersError(f"{path}: cannot read it: {error.strerror}") from None
        except UnicodeDecodeError:
            raise UsersError(f"{path}: cannot read it: not UTF-8 text") from None
    return parse_users(text, path)
