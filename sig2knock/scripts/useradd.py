"""
``sig2knockd_useradd USER``: enrol a user and print (or append) the line for the users file: a
password user (the password read without echo, never printed or logged; the line holds the public
half of the key pair derived from it for this server), or with ``--public-key`` a user who made
their own key pair with ``sig2knockc --keygen``.
"""

import argparse
import getpass
import os
import stat
import sys
from typing import Any, List, Optional, TextIO

from sig2knock import __version__
from sig2knock.protocol.kdf import (
    KdfError,
    KdfParams,
    check_password,
    check_user_name,
    password_line,
)


class UserAddError(Exception):
    """
    The user cannot be added; the message is for the operator and never contains the password.
    """


def build_parser() -> argparse.ArgumentParser:
    """
    The command line of ``sig2knockd_useradd``.
    """
    parser = argparse.ArgumentParser(
        prog="sig2knockd_useradd",
        description=(
            "Enrol USER: derive their key for this server from a password (asked twice,"
            " without echo), or take the public key they made with sig2knockc --keygen, and"
            " print the line to add to the daemon's users file, or append it with --users-file"
            " (or -c, to the configuration's USERS_FILE)."
        ),
    )
    parser.add_argument("user", metavar="USER", help="user name (letters, digits, . _ @ -)")
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    parser.add_argument(
        "--users-file",
        metavar="FILE",
        help="append the line to FILE (created with mode 0600) instead of printing it",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="CONFIG",
        help="the daemon's configuration: its server identity (in STATE_DIR) and, unless"
        " --users-file is given, its USERS_FILE to append to",
    )
    parser.add_argument(
        "--server-key",
        metavar="KEY",
        help="the server's public key (sig2knockd --show-identity), instead of -c",
    )
    parser.add_argument(
        "--host",
        metavar="HOST",
        help="with -c: the name or address clients reach the server at; the last line of the"
        " output is then an invitation (sig2knock:...) for sig2knockc --invite or --import,"
        " which holds nothing secret",
    )
    parser.add_argument(
        "--service",
        metavar="NAME",
        help="with --host: the invitation asks for this hidden service (a [service NAME] section"
        " of -c CONFIG) instead of the default one",
    )
    parser.add_argument(
        "--public-key",
        metavar="KEY",
        help="enrol a user with their own key pair: the public key sig2knockc --keygen printed"
        " (no password)",
    )
    parser.add_argument(
        "--kdf",
        metavar="PARAMS",
        default=KdfParams().format(),
        help="scrypt cost, as stored in the users file (default: %(default)s);"
        " clients of this user must pass the same --kdf; a cost below the default is refused"
        " without --allow-weak-kdf",
    )
    parser.add_argument(
        "--allow-weak-kdf",
        action="store_true",
        help="enrol with a --kdf below the default cost (for tests and slow clients; a stolen"
        " users file is then guessed that much faster)",
    )
    parser.add_argument(
        "--version", action="version", version=f"sig2knockd_useradd {__version__}"
    )
    return parser


def read_password(from_stdin: bool, stdin: TextIO = sys.stdin) -> str:
    """
    The password: one line of ``stdin``, or asked twice on the terminal without echo.
    """
    if from_stdin:
        return password_line(stdin)
    if not stdin.isatty():
        raise UserAddError("no terminal to ask for the password on; use --password-stdin")
    first = getpass.getpass("Password: ")
    check_password(first)
    if getpass.getpass("Password (again): ") != first:
        raise UserAddError("the passwords do not match")
    return first


def append_line(path: str, user: str, line: str) -> None:
    """
    Append ``line`` to the users file at ``path``, creating it with mode 0600; refuse a file that
    the daemon would refuse, or that already has ``user``.
    """
    from sig2knock.daemon.users import UsersError, load_users

    try:
        found = os.lstat(path)
    except FileNotFoundError:
        found = None
    except OSError as error:
        raise UserAddError(f"{path}: {error.strerror}") from None
    if found is not None and stat.S_ISLNK(found.st_mode):
        # Followed as root, a link the daemon's user planted would make this write elsewhere.
        raise UserAddError(
            f"{path}: a symbolic link; sig2knockd_useradd writes only to the users file itself"
            " (point USERS_FILE or --users-file at it)"
        )
    if found is not None:
        # root appends to the file of whatever user the daemon runs as (a service user), or to
        # its own file that the daemon reads through its group: owner and group stay, so the
        # file must be fit for them; the mode check is the same.
        owner = (found.st_uid, found.st_gid) if os.geteuid() == 0 else (None, None)
        try:
            existing = load_users(path, *owner)
        except UsersError as error:
            raise UserAddError(str(error)) from None
        if user in existing.entries:
            number = existing.entries[user].number
            raise UserAddError(f"{path}:{number}: user {user} is already there")
    try:
        # O_NOFOLLOW: a link put there since the check above is refused, not followed.
        descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "r+b") as users_file:
            size = os.fstat(descriptor).st_size
            if size > 0 and os.pread(descriptor, 1, size - 1) != b"\n":
                users_file.write(b"\n")
            users_file.write(line.encode("utf-8") + b"\n")
    except OSError as error:
        raise UserAddError(f"{path}: {error.strerror}") from None


def _config(path: str) -> Any:
    from sig2knock.daemon.settings import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as error:
        raise UserAddError(str(error)) from None


def _server_key(options: argparse.Namespace) -> bytes:
    """
    The public key of the server a password user is enrolled at: ``--server-key``, or the
    identity of ``-c``'s daemon.
    """
    from sig2knock.daemon.identity import IdentityError, identity_path, read_public
    from sig2knock.protocol.keys import parse_public_key

    if options.server_key is not None:
        return parse_public_key(options.server_key)
    if options.config is None:
        raise UserAddError(
            "a password user's key is made for one server: give -c CONFIG (the daemon's"
            " configuration) or --server-key KEY (sig2knockd --show-identity)"
        )
    try:
        return read_public(identity_path(_config(options.config).state_dir))
    except IdentityError as error:
        raise UserAddError(str(error)) from None


def _invitation(options: argparse.Namespace, user: str) -> Any:
    """
    The invitation of ``user`` at ``-c``'s server, reached at ``--host``.
    """
    from sig2knock.protocol.invitation import Invitation

    config = _config(options.config)
    server = _server_key(options)
    kdf = None if options.public_key is not None else KdfParams.parse(options.kdf)
    return Invitation(options.host, config.udp_port, server, user, kdf, options.service or "")


def _check_service(options: argparse.Namespace, user: str) -> None:
    """
    ``--service``: it needs ``--host``, and names a service of ``-c``'s configuration; a user its
    ``ALLOW`` does not admit (yet) gets a warning.
    """
    if options.service is None:
        return
    if options.host is None:
        raise UserAddError("--service names the service of the invitation: give --host")
    catalog = _config(options.config).catalog
    service = catalog.services.get(options.service)
    if service is None or not options.service:
        named = ", ".join(name for name in catalog.services if name) or "none"
        raise UserAddError(f"no [service {options.service}] in {options.config} (its"
                           f" services: {named})")
    if not service.allow.admits(user, catalog.groups):
        print(f"sig2knockd_useradd: warning: {user} may not reach service {options.service}"
              f" yet (its ALLOW: {service.allow})", file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    """
    Entry point of ``sig2knockd_useradd``.
    """
    options = build_parser().parse_args(argv)
    from sig2knock.daemon.users import format_user_line
    from sig2knock.protocol.keyline import format_key_line
    from sig2knock.protocol.keys import KeyFormatError, import_public_key, parse_public_key

    try:
        user = check_user_name(options.user)
        params = KdfParams.parse(options.kdf)
        if params.weak and options.public_key is None and not options.allow_weak_kdf:
            raise UserAddError(
                f"--kdf {params.format()} costs less memory than the default"
                f" {KdfParams().format()}, so a stolen users file is guessed faster; add"
                " --allow-weak-kdf to enrol it anyway"
            )
        if options.host is not None and options.config is None:
            raise UserAddError("--host makes an invitation for -c CONFIG's server: give -c")
        _check_service(options, user)
        users_file = options.users_file
        if options.config and not users_file:
            users_file = _config(options.config).users_file
        if options.public_key is not None:
            if options.password_stdin:
                raise UserAddError("--public-key enrols a user without a password")
            public = parse_public_key(options.public_key)
            import_public_key(public)  # refuses a key no one can use
            line = format_key_line(user, public, None)
        else:
            server = _server_key(options)
            password = check_password(read_password(options.password_stdin))
            line = format_user_line(user, password, server, params)
        if users_file:
            append_line(users_file, user, line)
            print(f"added user {user} to {users_file}", file=sys.stderr)
        else:
            print(line)
        if options.host is not None:
            print(_invitation(options, user).format())
    except (KdfError, UserAddError, KeyFormatError) as error:
        print(f"sig2knockd_useradd: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, EOFError):
        print("sig2knockd_useradd: interrupted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
