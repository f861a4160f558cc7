"""
``sig2knockc SERVER PORT``: knock on a sig2knock server and print the port it opens, run a command
with it (``--exec``), or relay standard input and output to it (``--stdio``).

Start-up time matters here (every login pays it), so this module imports neither Twisted nor
anything else it does not need; ``sig2knock.client.knocker``, ``wire`` and ``kdf`` are Twisted-free.
"""

import argparse
import getpass
import os
import sys
import time
from typing import Any, Callable, List, Optional, TextIO, Union

from sig2knock import __version__
from sig2knock.client import portable
from sig2knock.client.knocker import DEFAULT_KNOCKS, ClientError, knock, user_key
from sig2knock.protocol import keys
from sig2knock.protocol.addresses import PROTOCOLS_BY_NAME
from sig2knock.protocol.kdf import KdfError, KdfParams, check_user_name, password_line
from sig2knock.protocol.keys import KeyFormatError, import_public_key, parse_public_key
from sig2knock.protocol.names import (
    DEFAULT_LABEL,
    DEFAULT_SERVICE,
    ServiceNameError,
    check_service_name,
)
from sig2knock.protocol.wire import MAX_KNOCKS, UserKey

EXIT_OK = 0
EXIT_FAILED = 1



class PasswordError(Exception):
    """
    The password cannot be had from the source the user chose.
    """


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError, ImportError):
        # No LOGNAME/USER/USERNAME in the environment, and on Windows no pwd module to ask.
        return ""


def build_parser() -> argparse.ArgumentParser:
    """
    The command line of ``sig2knockc``. argparse exits with status 2 on usage errors.
    """
    parser = argparse.ArgumentParser(
        prog="sig2knockc",
        description=(
            "Knock on a sig2knock server and print the port it opened for this address."
            " Progress goes to standard error; on success standard output is exactly the"
            " port and a newline, so PORT=$(sig2knockc host 1001) works."
        ),
    )
    parser.add_argument(
        "server",
        metavar="SERVER",
        nargs="?",
        help="server host name or address; alone, the name of a server in"
        " ~/.config/sig2knock/servers.conf (see --import)",
    )
    parser.add_argument(
        "port", metavar="PORT", type=int, nargs="?", help="server control port (UDP_PORT)"
    )
    parser.add_argument(
        "--invite",
        metavar="INVITATION",
        help="knock on the server an invitation (sig2knockd_useradd --host) names, as its user",
    )
    parser.add_argument(
        "--import",
        dest="import_invitation",
        metavar="INVITATION",
        help="store the server of an invitation in ~/.config/sig2knock/servers.conf (as --name,"
        " default its host) and exit; then sig2knockc NAME knocks on it",
    )
    parser.add_argument(
        "--name", metavar="NAME", help="the name --import stores the server under"
    )
    parser.add_argument(
        "--service",
        metavar="NAME",
        help="the hidden service to ask for, as the server's [service NAME] sections name them;"
        " 'default' is the server's default service (default: the one the invitation or the"
        " server configured as SERVER names, else the default service); with --import, stored"
        " with the server",
    )
    parser.add_argument(
        "--server-key",
        metavar="KEY",
        help="the server's public key, as sig2knockd --show-identity prints it (only that"
        " server can read the request); not needed for a server in servers.conf or with"
        " --invite",
    )
    parser.add_argument(
        "--keygen",
        action="store_true",
        help="make a key pair for --user, save the private key to the key file (default:"
        " ~/.config/sig2knock/USER.key; encrypted with a passphrase from --password-* or the"
        " prompt, unless the passphrase is empty), print the public key for"
        " sig2knockd_useradd --public-key, and exit",
    )
    parser.add_argument(
        "--user", help="user name on the server (default: your login name)"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    source.add_argument(
        "--password-file",
        metavar="FILE",
        help="read the password from FILE (on POSIX refused unless only its owner can read"
        " it; on Windows a file outside your profile folder gets a warning)",
    )
    parser.add_argument(
        "--key-file",
        metavar="FILE",
        help="the key of --user: one made by --keygen, or one saved by --save-key (default:"
        " the saved key for this server, ~/.config/sig2knock/USER@SERVER.key, else"
        " ~/.config/sig2knock/USER.key; on Windows in %%APPDATA%%\\sig2knock); used instead of"
        " a password when it exists and no --password-* option is given",
    )
    parser.add_argument(
        "--save-key",
        action="store_true",
        help="derive the key for this server from the password once and, when the knock with it"
        " succeeds, save it to the key file (mode 0600), so later knocks need neither the"
        " password nor the 0.1 s of scrypt",
    )
    parser.add_argument(
        "--knock-proto",
        choices=("tcp", "udp"),
        default="tcp",
        help="knock with TCP SYNs or UDP datagrams; must match the server's KNOCK_PROTO"
        " (default: %(default)s)",
    )
    parser.add_argument(
        "--knocks",
        type=int,
        default=DEFAULT_KNOCKS,
        metavar="N",
        help=f"knock N random ports (1-{MAX_KNOCKS}); must be at least the server's KNOCK_COUNT"
        " (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up after this long without an answer (default: %(default)s)",
    )
    parser.add_argument(
        "--time-offset",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="add SECONDS (negative: subtract) to this host's clock for the knock's timestamps,"
        " for a clock that cannot be fixed and is more than the server's MAX_CLOCK_SKEW off"
        " (e.g. --time-offset -300 on a clock 5 minutes ahead)",
    )
    parser.add_argument(
        "--kdf",
        metavar="PARAMS",
        default=None,
        help="scrypt cost of this user's key, as in the server's users file (default: the"
        f" invitation's, else {KdfParams().format()})",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--exec",
        metavar="COMMAND",
        dest="command",
        help="run COMMAND with {port} and {host} filled in, e.g. 'ssh -p {port} me@{host}'",
    )
    action.add_argument(
        "--stdio",
        action="store_true",
        help="connect to the opened port and relay standard input and output"
        " (for ssh's ProxyCommand); the connection first shows the session's secret when the"
        " server asks for it, so nobody who took the grant on the way can use it",
    )
    parser.add_argument(
        "--no-address",
        action="store_true",
        help="do not tell the server the address this host sends from (for a network that"
        " translates even public addresses, such as NAT64; a server with"
        " REQUIRE_SOURCE_ADDRESS = yes then refuses the knock)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="report each step")
    parser.add_argument("--version", action="version", version=f"sig2knockc {__version__}")
    return parser


def read_password_file(path: str, warn: Callable[[str], None]) -> str:
    """
    The first line of ``path``, a file kept like an ssh key (``portable.read_private``).
    """
    try:
        text = portable.read_private(path, warn)
    except OSError as error:
        raise PasswordError(f"{path}: {error.strerror or error}") from None
    except portable.PrivateFileError as error:
        raise PasswordError(str(error)) from None
    return text.split("\n", 1)[0].rstrip("\r")


def read_password(options: argparse.Namespace, stdin: TextIO = sys.stdin) -> str:
    """
    The password from ``--password-file``, ``--password-stdin`` or a prompt without echo.
    """
    if options.password_file:
        return read_password_file(options.password_file, _warn)
    if options.password_stdin:
        return password_line(stdin)
    if not stdin.isatty() and not (options.stdio and portable.have_terminal()):
        hint = "--password-file" if options.stdio else "--password-stdin"
        raise PasswordError(f"no terminal to ask for the password on; use {hint}")
    return getpass.getpass(f"Password for {options.user}@{options.server}: ")


def command_line(template: str, port: int, host: str) -> Union[str, List[str]]:
    """
    ``--exec``'s COMMAND with ``{port}`` and ``{host}`` filled in (``portable.command``: words
    on POSIX, one string on Windows). Raises ``ValueError`` for unbalanced quotes or braces,
    ``KeyError`` for unknown fields.
    """
    return portable.command(template, port, host)


def _program(command: Union[str, List[str]]) -> str:
    """
    The program a command runs, for messages.
    """
    return command[0] if isinstance(command, list) else command.split(" ", 1)[0]


# Signals that end sig2knockc by default and are passed on to --exec's command instead, so that
# ``kill``, ``timeout`` or a closed terminal end the command rather than leave it running.
_PASSED_ON = ("SIGTERM", "SIGHUP", "SIGQUIT")


def run_command(
    command: Union[str, List[str]], popen: Optional[Callable[..., Any]] = None
) -> int:
    """
    Run ``--exec``'s command, wait for it and return its exit status (128 + N for a command
    ended by signal N, as shells report it), the same way on every platform. SIGTERM, SIGHUP
    and SIGQUIT sent to the client are passed on to the command; Ctrl-C reaches the command by
    itself (it shares the terminal), and the client waits on for it to end.
    """
    import signal
    import subprocess  # only --exec needs it

    child: Optional[Any] = None
    early: List[int] = []

    def pass_on(signum: int, frame: object) -> None:
        if child is None:
            early.append(signum)
        else:
            child.send_signal(signum)

    previous = {}
    for name in _PASSED_ON:
        if hasattr(signal, name):
            previous[name] = signal.signal(getattr(signal, name), pass_on)
    previous["SIGINT"] = signal.signal(signal.SIGINT, lambda signum, frame: None)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        try:
            # Handlers set by Python do not survive the exec of the command: it starts with the
            # default ones.
            child = (popen or subprocess.Popen)(command)
        except OSError as error:
            reason = error.strerror or error
            raise ClientError(f"cannot run {_program(command)}: {reason}") from None
        for signum in early:
            child.send_signal(signum)
        status = child.wait()
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
    return 128 - status if status < 0 else status


def check_options(parser: argparse.ArgumentParser, options: argparse.Namespace) -> None:
    """
    Usage checks argparse cannot express; each ends the program with status 2. The server comes
    from SERVER PORT, from ``--invite``, or from the name of a configured server; what the
    command line leaves out (``--server-key``, ``--user``, ``--kdf``) from the invitation or the
    configured server.
    """
    if options.name is not None and not options.import_invitation:
        parser.error("--name names the server --import stores")
    from_invitation = _configured_server(parser, options)
    if options.service == DEFAULT_LABEL:
        options.service = DEFAULT_SERVICE
    elif options.service is not None:
        try:
            check_service_name(options.service)
        except ServiceNameError as error:
            parser.error(f"--service: {error}")
    if from_invitation is not None and not options.import_invitation:
        # The service of the invitation or of the server named NAME; a server found for
        # SERVER PORT lends its key, user and KDF only: without --service that is the default.
        if options.service is None and (options.port is None or options.invite):
            options.service = from_invitation.service
        options.server, options.port = from_invitation.host, from_invitation.port
        if options.server_key is None:
            options.server_key = keys.format_public_key(from_invitation.server_key)
        if options.user is None:
            options.user = from_invitation.user
        if options.kdf is None and from_invitation.kdf is not None:
            options.kdf = from_invitation.kdf.format()
    if options.kdf is None:
        options.kdf = KdfParams().format()
    if options.import_invitation:
        return
    if options.user is None:
        options.user = _login_name()
    if not options.user:
        parser.error("no login name to take as the user name: give --user NAME")
    if options.keygen:
        if options.server is not None or options.command is not None or options.stdio:
            parser.error("--keygen makes a key and knocks nowhere: no SERVER, --exec or --stdio")
        try:
            check_user_name(options.user)
        except KdfError as error:
            parser.error(str(error))
        return
    if options.server is None or options.port is None:
        parser.error("SERVER and PORT are required to knock")
    if options.server_key is None:
        parser.error("--server-key KEY is required: the server's public key, as"
                     " sig2knockd --show-identity prints it")
    try:
        options.server_public = parse_public_key(options.server_key)
        import_public_key(options.server_public)
    except KeyFormatError as error:
        parser.error(f"--server-key: {error}")
    if not 0 < options.port < 65536:
        parser.error(f"PORT {options.port} is not a port number (1-65535)")
    if not options.timeout > 0:
        parser.error("--timeout must be a positive number of seconds")
    if not abs(options.time_offset) <= 366 * 86400:  # also refuses nan
        parser.error("--time-offset must be a number of seconds within a year")
    if not 1 <= options.knocks <= MAX_KNOCKS:
        parser.error(f"--knocks must be from 1 to {MAX_KNOCKS}")
    try:
        check_user_name(options.user)
        KdfParams.parse(options.kdf)
    except KdfError as error:
        parser.error(str(error))
    if options.password_stdin and options.stdio:
        parser.error("--stdio relays standard input, so the password cannot come from it")
    if options.command is not None:
        try:
            command = command_line(options.command, 1, options.server)
        except (KeyError, IndexError) as error:
            parser.error(f"--exec: unknown field {{{error.args[0]}}}: only {{port}} and {{host}}")
        except ValueError as error:
            parser.error(f"--exec: {error}")
        if not (command if isinstance(command, list) else command.strip()):
            parser.error("--exec: empty command")


def _configured_server(parser: argparse.ArgumentParser, options: argparse.Namespace) -> Any:
    """
    The invitation (``--invite``, ``--import``), the configured server that SERVER alone names,
    or the one configured for SERVER PORT; ``None`` when none applies.
    """
    given = options.invite or options.import_invitation
    if given:
        from sig2knock.protocol.invitation import InvitationError, parse_invitation

        if options.server is not None:
            parser.error("an invitation names the server: no SERVER or PORT with it")
        try:
            return parse_invitation(given)
        except InvitationError as error:
            parser.error(str(error))
    if options.server is None or options.keygen:
        return None
    if options.port is not None and options.server_key is not None:
        return None
    from sig2knock.client.servers import ServersError, find_server, load_servers, servers_path

    try:
        servers = load_servers(servers_path())
    except ServersError as error:
        parser.error(str(error))
    if options.port is None:
        if options.server not in servers:
            parser.error(f"no server {options.server!r} in {servers_path()}: give SERVER PORT,"
                         " or store it with --import INVITATION")
        return servers[options.server]
    found = find_server(servers, options.server, options.port)
    return None if found is None else found[1]


def import_server(options: argparse.Namespace) -> int:
    """
    ``--import``: store the invitation's server in the client's servers file.
    """
    from sig2knock.client.servers import ServersError, save_server, servers_path
    from sig2knock.protocol.invitation import parse_invitation

    invitation = parse_invitation(options.import_invitation)
    if options.service is not None:
        invitation = invitation._replace(service=options.service)
    name = options.name or invitation.host
    try:
        save_server(servers_path(), name, invitation)
    except ServersError as error:
        raise PasswordError(str(error)) from None
    service = f", service {invitation.service}" if invitation.service else ""
    _report(f"server {name} ({invitation.host} port {invitation.port}, user {invitation.user}"
            f"{service}, key {keys.fingerprint(invitation.server_key)}) saved to"
            f" {servers_path()}; knock with: sig2knockc {name}")
    return EXIT_OK


def _report(line: str) -> None:
    print(f"sig2knockc: {line}", file=sys.stderr, flush=True)


_warn = _report  # warnings are shown with or without -v


def _silent(line: str) -> None:
    pass


def _passphrase_for(options: argparse.Namespace) -> Callable[[str], str]:
    """
    Where the passphrase of an encrypted key file comes from: ``--password-*``, else a prompt.
    """

    def passphrase(path: str) -> str:
        if options.password_file or options.password_stdin:
            return read_password(options)
        if not sys.stdin.isatty() and not (options.stdio and portable.have_terminal()):
            raise PasswordError(f"{path} is encrypted and there is no terminal to ask on")
        return getpass.getpass(f"Passphrase for {path}: ")

    return passphrase


def obtain_key(options: argparse.Namespace, report: Callable[[str], None]) -> UserKey:
    """
    The user's key at this server: from the key file when there is one (and no password option
    was given), else derived from the password (``--save-key`` saves it once a knock with it
    succeeded: ``save_knocked_key``).
    """
    from sig2knock.client.keyfile import KeyFileError, load_key

    server = options.server_public
    paths = key_paths(options)
    password_given = options.password_stdin or options.password_file
    try:
        if not options.save_key and (options.key_file or not password_given):
            # With --key-file, --password-* is the passphrase of an encrypted key.
            for path in paths:
                saved = load_key(path, options.user, server, _passphrase_for(options), _warn)
                if saved is not None:
                    report(f"key read from {path}")
                    return saved
            if options.key_file:
                raise PasswordError(f"{options.key_file}: no such file")
        password = read_password(options)
        if not password:
            raise PasswordError("the password is empty")
        started = time.monotonic()
        key = user_key(password, options.user, options.kdf, server)
        report(f"key derived in {(time.monotonic() - started) * 1000:.0f} ms")
    except KeyFileError as error:
        raise PasswordError(str(error)) from None
    return key


def key_paths(options: argparse.Namespace) -> List[str]:
    """
    Where the key of ``--user`` at this server is looked for, first the one ``--save-key``
    writes: ``--key-file``, else the saved key for this server, then the user's own key.
    """
    from sig2knock.client.keyfile import default_key_path

    if options.key_file:
        return [options.key_file]
    server = options.server_public
    return [default_key_path(options.user, server), default_key_path(options.user)]


def save_knocked_key(
    options: argparse.Namespace, key: UserKey, report: Callable[[str], None]
) -> None:
    """
    ``--save-key``: save ``key``, which has just opened a port at this server (a key from a
    mistyped password or a wrong ``--kdf`` never gets saved).
    """
    from sig2knock.client.keyfile import KeyFileError, save_key

    path = key_paths(options)[0]
    try:
        save_key(path, key, options.server_public)
    except KeyFileError as error:
        raise PasswordError(str(error)) from None
    report(f"key saved to {path}")


def keygen(options: argparse.Namespace) -> int:
    """
    ``--keygen``: make a key pair for ``--user``, save its private half and print the public
    half (the last line of standard output); refuse to replace a key file that exists.
    """
    from sig2knock.client.keyfile import KeyFileError, default_key_path, save_key

    path = options.key_file or default_key_path(options.user)
    if os.path.lexists(path):
        raise PasswordError(f"{path} exists already; it is kept (give another --key-file)")
    if options.password_file or options.password_stdin:
        passphrase = read_password(options)
    elif sys.stdin.isatty():
        passphrase = getpass.getpass(f"Passphrase for {path} (empty for none): ")
        if passphrase and getpass.getpass("Passphrase (again): ") != passphrase:
            raise PasswordError("the passphrases do not match")
    else:
        passphrase = ""
    key = UserKey(options.user, keys.generate())
    try:
        save_key(path, key, None, passphrase or None)
    except KeyFileError as error:
        raise PasswordError(str(error)) from None
    _report(f"key of {options.user} saved to {path}; enrol it with: sig2knockd_useradd"
            f" --public-key {keys.format_public_key(key.public)} {options.user}")
    print(keys.format_public_key(key.public), flush=True)
    return EXIT_OK


def run(options: argparse.Namespace) -> int:
    """
    Derive the key, knock, and act on the grant as the options say. Returns the exit status
    (with ``--exec``, the command's).
    """
    if options.keygen:
        return keygen(options)
    if options.import_invitation:
        return import_server(options)
    report = _report if options.verbose else _silent
    key = obtain_key(options, report)
    result = knock(
        options.server,
        options.port,
        key,
        options.server_public,
        send_address=not options.no_address,
        door=options.stdio,
        service=options.service or "",
        protocol=PROTOCOLS_BY_NAME[options.knock_proto],
        knocks=options.knocks,
        timeout=options.timeout,
        time_offset=options.time_offset,
        report=report,
    )
    if result.relayed:
        raise ClientError(
            f"the server opened port {result.port} for {result.granted_address}, not for this"
            f" host's {result.client_address}: someone on the way is relaying this login"
        )
    if options.save_key:
        save_knocked_key(options, key, report)
    if result.granted_address is not None:
        report(f"port {result.port} opened for {result.granted_address}")
    if options.command is not None:
        command = command_line(options.command, result.port, options.server)
        report(f"running {_program(command)}")
        return run_command(command)
    if options.stdio:
        from sig2knock.client.relay import connect, relay  # not at every start: --stdio only

        with connect(result, options.timeout) as sock:
            report(f"connected to {result.target.address} port {result.port}")
            try:
                received = relay(sock)
            except ConnectionResetError:
                received = 0
        if not received:
            raise ClientError(
                f"the connection to {result.target.address} port {result.port} ended before"
                " anything came back: the hidden service is down or refused it (the server's"
                " log says why)"
            )
        return EXIT_OK
    print(result.port, flush=True)
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    """
    Entry point of ``sig2knockc``.
    """
    parser = build_parser()
    options = parser.parse_args(argv)
    check_options(parser, options)
    try:
        return run(options)
    except (PasswordError, ClientError) as error:
        print(f"sig2knockc: {error}", file=sys.stderr)
    except (KeyboardInterrupt, EOFError):
        print("sig2knockc: interrupted", file=sys.stderr)
    except OSError as error:
        print(f"sig2knockc: {error.strerror or error}", file=sys.stderr)
    return EXIT_FAILED


def entry_point() -> None:
    """
    The ``sig2knockc`` command: ``main``, then an immediate exit. Tearing the interpreter down
    properly costs 10-15 ms that every login would wait for, and there is nothing to tear down:
    the sockets are closed, the output is flushed here.
    """
    status = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        status = status or EXIT_FAILED
    os._exit(status)


if __name__ == "__main__":
    entry_point()
