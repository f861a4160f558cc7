"""
What the client does differently on Windows, in one place: files that hold a secret, where its
configuration lives, the terminal, standard input and output, and ``--exec``'s command line.

Every branch reads ``WINDOWS`` when it runs, so the tests run both branches on any platform
(``sig2knock.test.test_portable``). Nothing here imports a POSIX-only module (``pwd``, ``grp``,
``fcntl``, ``termios``) or Twisted: the client imports this module on every platform.
"""

import os
from typing import Callable, List, Optional, Union

from sig2knock.protocol import files

WINDOWS = os.name == "nt"
# Windows' C runtime translates line ends on descriptors opened without it.
_BINARY = getattr(os, "O_BINARY", 0)


class PrivateFileError(Exception):
    """
    A file that holds a secret cannot be used; the message says how to fix it and never quotes
    the file's content.
    """


def config_home() -> str:
    """
    Where the client keeps its files: ``$XDG_CONFIG_HOME/sig2knock``, else on Windows
    ``%APPDATA%\\sig2knock`` (in the user's profile, which only the user can read), else
    ``~/.config/sig2knock``.
    """
    base = os.environ.get("XDG_CONFIG_HOME")
    if not base and WINDOWS:
        base = os.environ.get("APPDATA")
    if not base:
        base = os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "sig2knock")


def _posix_problem(path: str, status: os.stat_result) -> Optional[str]:
    found = files.exposure(status, os.geteuid())
    if found is None:
        return None
    if found.kind == files.NOT_REGULAR:
        return f"{path}: not a regular file"
    if found.kind == files.OTHER_OWNER:
        return (
            f"{path}: holds a secret but belongs to another user (uid {found.owner});"
            " use a file of your own"
        )
    return (
        f"{path}: holds a secret but is open to group or others (mode {found.mode:04o});"
        f" fix with: chmod 600 {path}"
    )


def _windows_warning(path: str) -> Optional[str]:
    """
    Windows keeps no owner-only mode bits (a file reports 0666 whoever may read it), and its
    access lists are not checked here. The documented equivalent: a file inside the user's
    profile folder, which Windows makes readable by that user (and administrators) only, as it
    does for ``%APPDATA%``, where ``--save-key`` writes. Elsewhere, say that nothing was checked.
    """
    import ntpath  # Windows' path rules, also where this branch is simulated

    profile = os.environ.get("USERPROFILE")
    if profile:
        # Compared as written (case folded, made absolute): short 8.3 names and junctions are
        # not resolved, so such a spelling of the profile folder gets the warning too.
        folder = ntpath.normcase(ntpath.abspath(profile))
        try:
            inside = ntpath.commonpath([ntpath.normcase(ntpath.abspath(path)), folder]) == folder
        except ValueError:  # another drive
            inside = False
        if inside:
            return None
    where = profile or "your profile folder"
    return (
        f"warning: cannot check who may read {path} on Windows; keep it inside {where},"
        " which only you can read"
    )


def read_private(path: str, warn: Callable[[str], None]) -> str:
    """
    The text of ``path``, a file that holds a secret (a saved key, a password). On POSIX it must
    be a regular file of this user's, closed to group and others (like an ssh private key), or
    ``PrivateFileError`` says how to fix it; on Windows ``warn`` is told when the file lies
    outside the user's profile folder (``_windows_warning``). ``OSError`` passes through.
    """
    # Not blocking: a FIFO put in the file's place would otherwise wait for a writer.
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _BINARY)
    with open(descriptor, encoding="utf-8") as private:
        if WINDOWS:
            warning = _windows_warning(path)
            if warning is not None:
                warn(warning)
        else:
            problem = _posix_problem(path, os.fstat(private.fileno()))
            if problem is not None:
                raise PrivateFileError(problem)
        try:
            return private.read()
        except UnicodeDecodeError:
            raise PrivateFileError(f"{path}: not UTF-8 text") from None


def write_private(path: str, text: str) -> None:
    """
    Replace ``path`` with ``text`` atomically (``files.write_atomically``: mode 0600), in a
    directory created mode 0700 (on Windows the modes mean nothing and the profile folder's
    protection applies). ``OSError`` passes through.
    """
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    files.write_atomically(path, text.encode("utf-8"))


def have_terminal() -> bool:
    """
    Whether a console can be opened to ask for a password on (getpass asks there, not on
    standard input): ``/dev/tty`` on POSIX, ``CONIN$`` on Windows.
    """
    try:
        with open("CONIN$" if WINDOWS else "/dev/tty", "rb", buffering=0):
            return True
    except OSError:
        return False


def binary_stdio(*descriptors: int) -> None:
    """
    On Windows, switch the C runtime's standard descriptors to binary mode, so that relayed
    bytes are not translated (``\\n`` into ``\\r\\n``); nothing to do on POSIX.
    """
    if WINDOWS:
        import msvcrt  # Windows only

        binary = getattr(os, "O_BINARY", 0x8000)
        for descriptor in descriptors:
            msvcrt.setmode(descriptor, binary)  # type: ignore[attr-defined]


def command(template: str, port: int, host: str) -> Union[str, List[str]]:
    """
    ``--exec``'s COMMAND with ``{port}`` and ``{host}`` filled in, ready for ``subprocess``: on
    POSIX split into words like a shell would (``{...}`` filled in each word); on Windows one
    string, which CreateProcess splits by Windows' own rules (a POSIX split would eat the
    backslashes of ``C:\\...\\ssh.exe``). Raises ``ValueError`` for unbalanced quotes or
    braces, ``KeyError``/``IndexError`` for unknown fields.
    """
    if WINDOWS:
        return template.format(port=port, host=host)
    import shlex  # only --exec needs it

    return [word.format(port=port, host=host) for word in shlex.split(template)]
