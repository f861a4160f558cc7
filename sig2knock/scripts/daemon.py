"""
``sig2knockd``: run the daemon in the foreground (``twistd -n sig2knock`` with the seed's options),
or check a configuration with ``--check-config``.
"""

import argparse
import os
import sys
import time
from typing import Any, List, Optional

from sig2knock import __version__

# What the daemon needs beyond the client: the [server] extra.
# (The twistd drop-in, twisted/plugins/, is in every install: "twisted" alone says nothing.)
SERVER_MODULES = ("twisted.internet", "pcapy", "zope.interface")


def build_parser() -> argparse.ArgumentParser:
    """
    The command line of ``sig2knockd``.
    """
    parser = argparse.ArgumentParser(
        prog="sig2knockd",
        description=(
            "The sig2knock port-knocking daemon, in the foreground (like twistd -n sig2knock)."
            " Logs go to standard output."
        ),
    )
    parser.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="FILE",
        help="configuration file (default: /etc/sig2knock/sig2knockd.conf, or"
        " etc/sig2knockd.conf when run from the top of the checkout this sig2knockd runs from,"
        " as after ./bootstrap; never another checkout's)",
    )
    parser.add_argument(
        "-i",
        "--interface",
        metavar="IFACE",
        help="capture interface; overrides INTERFACE and PKTFILTER_INTERFACE",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="check the configuration, the users file, STATE_DIR's mode and that the control"
        " port is free (or held by the running daemon), print a summary and exit",
    )
    parser.add_argument(
        "--init",
        action="store_true",
        help="make the server's identity (its key pair, in STATE_DIR) if it has none, print its"
        " public key and exit",
    )
    parser.add_argument(
        "--show-identity",
        action="store_true",
        help="print the server's public key and its fingerprint, and exit",
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="ask the running daemon (as root or the daemon's user) for its pending sessions"
        " and open grants: user, source address, service, assigned port, time left and whether"
        " the grant was used; print them and exit",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="with --status: print the daemon's answer as JSON, for scripts",
    )
    parser.add_argument(
        "--list-interfaces",
        action="store_true",
        help="print the capture interfaces, numbered as -i and INTERFACE take them (like"
        " tcpdump -D), with whether each is up and its addresses, and exit",
    )
    parser.add_argument(
        "--flush",
        action="store_true",
        help="remove every firewall rule and table sig2knockd installed (nftables and iptables"
        " with FIREWALL = auto, else the configured backend) and exit",
    )
    parser.add_argument("--version", action="version", version=f"sig2knockd {__version__}")
    return parser


def missing_server_profile() -> Optional[str]:
    """
    Why the daemon cannot run in this installation because the client profile alone is
    installed (``pip install sig2knock`` installs the command but not its dependencies), or
    ``None``.
    """
    import importlib.util

    def installed(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # no parent package, or a module made unimportable
            return False

    missing = [name for name in SERVER_MODULES if not installed(name)]
    if not missing:
        return None
    return (
        f"the daemon needs sig2knock's server profile ({', '.join(missing)} not installed):"
        " pip install 'sig2knock[server]', or the Debian package"
    )


def installation_problem() -> Optional[str]:
    """
    Why this installation cannot run the daemon (a module of it is missing or broken, as in a
    wheel built without a package), or ``None``: every module the daemon may load is imported.
    """
    import importlib
    import pkgutil

    try:
        importlib.import_module("sig2knock.daemon.tap")  # the service and everything it wires
        firewall = importlib.import_module("sig2knock.firewall")
        for backend in pkgutil.iter_modules(firewall.__path__):  # loaded on demand otherwise
            importlib.import_module(f"{firewall.__name__}.{backend.name}")
    except ImportError as error:
        return f"this installation of sig2knock is incomplete ({error}); reinstall it"
    return None


def check_config(config_path: str, interface: Optional[str]) -> int:
    """
    Validate the configuration and the users file, and what the daemon would refuse at start
    (a ``STATE_DIR`` others can write to, a control port another program holds), without
    changing anything (``main`` has checked the installation); return the exit status.
    """
    from sig2knock.daemon import preflight
    from sig2knock.daemon.settings import ConfigError, load_config
    from sig2knock.daemon.startup import resolve_interface
    from sig2knock.daemon.users import UsersError, load_users, service_gid

    try:
        config = load_config(config_path, interface)
        capture_interface = resolve_interface(config)
        # root checks for the daemon, which runs as another user (the service group's).
        as_root = os.geteuid() == 0
        users = load_users(config.users_file, gid=service_gid() if as_root else None)
    except (ConfigError, UsersError) as error:
        print(f"sig2knockd: {error}", file=sys.stderr)
        return 1
    problem = preflight.state_dir_problem(config.state_dir, for_its_owner=os.geteuid() == 0)
    if problem is not None:
        print(f"sig2knockd: {problem}", file=sys.stderr)
        return 1
    holder = preflight.control_port_holder(config.udp_port, config.listen_address)
    port_note = ""
    if holder is not None and preflight.is_sig2knock(holder):
        port_note = f" (held now by the running daemon, {holder})"
    elif holder is not None:
        print(
            f"sig2knockd: UDP_PORT {config.udp_port}: in use by {holder}; the daemon could not"
            " start",
            file=sys.stderr,
        )
        return 1
    low, high = config.assign_port_range
    print(
        f"{config.path}: OK: control port {config.udp_port}/udp{port_note}, forward to"
        f" {config.forward_to_ip} port {config.forward_to_port}, ports {low}-{high},"
        f" firewall {config.firewall} ({config.firewall_policy}), knocks on {capture_interface},"
        f" {len(users)} user(s) in {users.path}"
    )
    known = set(users.entries)
    for service in config.catalog.services.values():
        address, port = service.target
        unknown = sorted(service.allow.users - known)
        note = f"; not in the users file: {', '.join(unknown)}" if unknown else ""
        print(f"  service {service.label}: {address} port {port}, {service.open_time:g}s,"
              f" for {service.allow}{note}")
    for group, members in config.catalog.groups.items():
        unknown = sorted(members - known)
        if unknown:
            print(f"  group {group}: not in the users file: {', '.join(unknown)}")
    return 0


def list_interfaces() -> int:
    """
    ``--list-interfaces``: the numbered capture interfaces, one a line; return the exit status.
    """
    from sig2knock.daemon.interfaces import capture_interfaces

    try:
        found = capture_interfaces()
    except Exception as error:  # the capture library could not list them
        print(f"sig2knockd: cannot list the capture interfaces: {error}", file=sys.stderr)
        return 1
    for interface in found:
        print(interface.line())
    return 0


def interface_of(config: Any) -> str:
    """
    The interface the daemon uses for ``config`` (as at start), or ``""`` when there is none.
    """
    from sig2knock.daemon.settings import ConfigError
    from sig2knock.daemon.startup import resolve_interface

    try:
        return resolve_interface(config)
    except ConfigError:
        return config.interface or ""


def flush(config_path: str, interface: Optional[str]) -> int:
    """
    Remove what the daemon installed in the firewall; return the exit status.
    """
    from twisted.internet.defer import gatherResults, maybeDeferred
    from twisted.internet.task import react
    from twisted.python.failure import Failure

    from sig2knock.daemon.settings import ConfigError, firewall_settings, load_config
    from sig2knock.firewall import FirewallError, registry

    try:
        config = load_config(config_path, interface)
    except ConfigError as error:
        print(f"sig2knockd: {error}", file=sys.stderr)
        return 1
    backends = registry.flush_candidates(config.firewall)
    status = {"code": 0}

    settings = firewall_settings(config, interface_of(config))

    def run(reactor: Any) -> Any:
        def flush_one(backend: registry.Backend) -> Any:
            flushing = maybeDeferred(lambda: backend.build(reactor, settings).flush())

            def report(result: Any) -> None:
                if isinstance(result, Failure):
                    result.trap(FirewallError)
                    status["code"] = 1
                    print(f"sig2knockd: {backend.name}: {result.getErrorMessage()}",
                          file=sys.stderr)
                else:
                    print(f"sig2knockd: {backend.name}: everything sig2knock installed is removed")

            return flushing.addBoth(report)

        return gatherResults([flush_one(backend) for backend in backends])

    if not backends:
        print("sig2knockd: no firewall tool on this host: nothing to remove")
        return 0
    try:
        react(run)
    except SystemExit:
        pass
    return status["code"]


def identity_command(config_path: str, make: bool) -> int:
    """
    ``--init`` (``make``) and ``--show-identity``: print ``KEY FINGERPRINT`` of the server's
    identity, made first with ``--init`` when there is none; return the exit status.
    """
    from sig2knock.daemon import identity
    from sig2knock.daemon.settings import ConfigError, load_config
    from sig2knock.daemon.startup import ensure_state_dir
    from sig2knock.protocol.keys import fingerprint, format_public_key

    try:
        config = load_config(config_path)
        path = identity.identity_path(config.state_dir)
        if make and not os.path.lexists(path):
            from sig2knock.daemon.replay import ReplayCacheError

            try:
                # root prepares it for the daemon's user, who owns it.
                ensure_state_dir(config.state_dir, for_its_owner=os.geteuid() == 0)
            except ReplayCacheError as error:
                raise identity.IdentityError(str(error)) from None
            state = os.stat(config.state_dir)
            # root prepares it for the daemon's user, who owns the state directory.
            owner = (state.st_uid, state.st_gid) if os.geteuid() == 0 else None
            given = owner if owner and owner[0] != 0 else None
            identity.create_identity(path, given)
            # An empty replay cache beside it: a later start that finds the identity alone
            # knows its cache was lost, rather than taking it for a first start.
            from sig2knock.daemon.replay import FILE_NAME
            from sig2knock.daemon.replay_file import write_empty

            try:
                write_empty(os.path.join(config.state_dir, FILE_NAME), int(time.time() * 1000),
                            given)
            except ReplayCacheError as error:
                raise identity.IdentityError(str(error)) from None
            print(f"sig2knockd: made the server identity {path}", file=sys.stderr)
        public = identity.read_public(path)
    except (ConfigError, identity.IdentityError) as error:
        print(f"sig2knockd: {error}", file=sys.stderr)
        return 1
    print(f"{format_public_key(public)} {fingerprint(public)}")
    return 0


def twistd_arguments(config_path: str, interface: Optional[str]) -> List[str]:
    """
    The twistd command line equivalent to ``sig2knockd -c CONFIG [-i IFACE]``: foreground, no
    pid file (a service manager tracks the process).
    """
    arguments = ["--nodaemon", "--pidfile=", "sig2knock", "--config", config_path]
    if interface is not None:
        arguments += ["--interface", interface]
    return arguments


def main(argv: Optional[List[str]] = None) -> int:
    """
    Entry point of ``sig2knockd``.
    """
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.json and not options.status:
        parser.error("--json goes with --status")
    problem = missing_server_profile()
    if problem is None and options.check_config:
        # Only here: a broken installation must not keep --flush from removing the rules.
        problem = installation_problem()
    if problem is not None:
        print(f"sig2knockd: {problem}", file=sys.stderr)
        return 1
    from sig2knock.daemon.settings import default_config_path

    if options.config is None:
        options.config = default_config_path()
    if options.status:
        from sig2knock.daemon.status_query import status_command

        return status_command(options.config, options.json, sys.stdout.write)
    if options.list_interfaces:
        return list_interfaces()
    if options.check_config:
        return check_config(options.config, options.interface)
    if options.flush:
        return flush(options.config, options.interface)
    if options.init or options.show_identity:
        return identity_command(options.config, options.init)
    from twisted.scripts import twistd

    from sig2knock.daemon import firewall_service

    sys.argv = ["sig2knockd"] + twistd_arguments(options.config, options.interface)
    twistd.run()
    # The daemon stopped itself because its firewall rules could not be installed.
    return 1 if firewall_service.start_failures else 0


if __name__ == "__main__":
    sys.exit(main())
