"""
``sig2knockd_useradd USER``: derive a user's key from a password and print (or append) the line
for the users file. The password is read without echo and never printed or logged.
"""

import argparse
import getpass
import os
import sys
from typing import List, Optional, TextIO

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
            "Derive USER's key from a password (asked twice, without echo) and print the line"
            " to add to the daemon's users file, or append it with --users-file."
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
        "--kdf",
        metavar="PARAMS",
        default=KdfParams().format(),
        help="scrypt cost, as stored in the users file (default: %(default)s);"
        " clients of this user must pass the same --kdf",
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

    if os.path.exists(path):
        # root appends to the file of whatever user the daemon runs as (a service user): the
        # owner stays, so the file must be that user's; the mode check is the same.
        owner = os.stat(path).st_uid if os.geteuid() == 0 else None
        try:
            existing = load_users(path, owner)
        except UsersError as error:
            raise UserAddError(str(error)) from None
        if user in existing.entries:
            number = existing.entries[user].line
            raise UserAddError(f"{path}:{number}: user {user} is already there")
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(descriptor, "a", encoding="utf-8") as users_file:
            if users_file.tell() > 0:
                with open(path, "rb") as current:
                    current.seek(-1, os.SEEK_END)
                    if current.read(1) != b"\n":
                        users_file.write("\n")
            users_file.write(line + "\n")
    except OSError as error:
        raise UserAddError(f"{path}: {error.strerror}") from None


def main(argv: Optional[List[str]] = None) -> int:
    """
    Entry point of ``sig2knockd_useradd``.
    """
    options = build_parser().parse_args(argv)
    from sig2knock.daemon.users import format_user_line

    try:
        user = check_user_name(options.user)
        params = KdfParams.parse(options.kdf)
        password = check_password(read_password(options.password_stdin))
        line = format_user_line(user, password, params)
        if options.users_file:
            append_line(options.users_file, user, line)
            print(f"added user {user} to {options.users_file}", file=sys.stderr)
        else:
            print(line)
    except (KdfError, UserAddError) as error:
        print(f"sig2knockd_useradd: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, EOFError):
        print("sig2knockd_useradd: interrupted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
