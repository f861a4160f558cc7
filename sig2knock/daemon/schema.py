"""
Every key of ``sig2knockd.conf``, defined once: a row each, in the order the documentation
lists them, with its value type, default, what a reload does with it and its documentation.
The parser (``sig2knock.daemon.settings``), the reload, ``--check-config``, the README's
configuration reference and ``sig2knockd.conf(5)`` all read these rows; adding a key is a row
here and the code that uses it.
"""

from typing import Any, Callable, NamedTuple, Tuple

from sig2knock.daemon import values
from sig2knock.daemon.catalog import EVERY_USER, Access, parse_users
from sig2knock.firewall import POLICIES, registry
from sig2knock.protocol.wire import MAX_KNOCKS

# What a reload (SIGHUP) does with a changed value.
LIVE = "live"  # the next session uses it
RESTART = "restart"  # bound to an open socket, the capture, the firewall or the replay cache
# With FORWARD_MODE = nat the kernel's base rules depend on the targets' address family and on
# whether one is on loopback: a change of those waits for a restart.
LIVE_UNLESS_NAT = "live-unless-nat"


class Required:
    """
    The default of a key that has none: it must be set.
    """

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = Required()


class Setting(NamedTuple):
    """
    One key: ``key`` as written in the file, ``attribute`` of the parsed configuration,
    ``parse`` its value type (``sig2knock.daemon.values``), ``default`` (``REQUIRED``, or the
    value when the key is left out; ``None`` for "unset"), ``shown`` the default as the
    documentation says it, ``reload`` (``LIVE``, ``RESTART`` or ``LIVE_UNLESS_NAT``) and
    ``doc``, its documentation (Markdown, one paragraph).
    """

    key: str
    attribute: str
    parse: Callable[[str], Any]
    default: Any
    shown: str
    reload: str
    doc: str

    @property
    def accepts(self) -> str:
        """
        The range of values it takes (``1-86400``), or ``""``.
        """
        return str(getattr(self.parse, "accepts", ""))


SCHEMA: Tuple[Setting, ...] = (
    Setting(
        "UDP_PORT", "udp_port", values.port(), REQUIRED, "required", RESTART,
        "UDP port of the encrypted control channel; the only port the daemon answers on, and"
        " only to valid messages.",
    ),
    Setting(
        "FORWARD_TO_IP", "forward_to_ip", values.forward_address, REQUIRED, "required",
        LIVE_UNLESS_NAT,
        "address of the hidden service; usually `127.0.0.1`, so the service itself is"
        " unreachable from outside.",
    ),
    Setting(
        "FORWARD_TO_PORT", "forward_to_port", values.port(), REQUIRED, "required",
        LIVE_UNLESS_NAT, "port of the hidden service (22 for sshd).",
    ),
    Setting(
        "ALLOW", "allow", values.parsed_by(Access.parse), EVERY_USER, "`*`", LIVE,
        "who may reach the default service: `*` (every user of the users file), or user names"
        " and `@group`s of `[group NAME]` sections, separated by spaces or commas. A user who"
        " may not gets nothing, as if their key were wrong; the log says why. See"
        " [Services](docs/services.md).",
    ),
    Setting(
        "FORWARD_MODE", "forward_mode", values.Choice(("proxy", "nat")), "proxy", "`proxy`",
        RESTART,
        "`proxy`: the daemon listens on the assigned port and forwards the one connection"
        " itself (Twisted's portforward, with flow control). `nat`: the firewall DNATs the"
        " grant's first connection straight to the forward target in the kernel and deletes"
        " the grant at that first SYN (one connection, enforced by the kernel); the data never"
        " enters Python, so throughput is the kernel's. Needs `FIREWALL = nftables` (a map,"
        " and a set that forgets the grant at its first SYN) or `iptables` (a DNAT rule per"
        " grant with its `--datestop`, and an `xt_recent` list that leaves a second connection"
        " alone), or `auto`; clients must be of the forward target's address family; a"
        " loopback target turns on `route_localnet` on `INTERFACE`, with a rule that drops"
        " every other packet from outside to 127.0.0.0/8. It is the default of every"
        " service; a `[service NAME]` may set its own.",
    ),
    Setting(
        "SINGLECONN_PORTOPEN_TIME", "singleconn_portopen_time", values.Seconds(1, 86400), 30.0,
        "`30`", LIVE,
        "seconds an assigned port waits for its single connection; long enough for a"
        " human-started ssh, short enough that a forgotten grant closes soon. An established"
        " connection outlives it.",
    ),
    Setting(
        "PKTFILTER_INTERFACE", "pktfilter_interface", values.text, None, "unset", RESTART,
        "the seed's interface key; used as `INTERFACE` when that is not set.",
    ),
    Setting(
        "INTERFACE", "interface", values.interface, None, "default-route interface", RESTART,
        "where knocks are captured: a name, or a number of `sig2knockd --list-interfaces`"
        " (the seed's `-i 1`). `-i` overrides both keys.",
    ),
    Setting(
        "INTERFACE_WAIT", "interface_wait", values.Seconds(0, 3600), 60.0, "`60`", RESTART,
        "seconds to wait at start for the capture interface (or a default route) to appear or"
        " come up, checking once a second; a daemon started at boot before the network is"
        " ready waits instead of failing. `0` fails at once.",
    ),
    Setting(
        "USERS_FILE", "users_file", values.path, "user.txt",
        "`user.txt` beside the configuration", LIVE,
        "the users and their keys; must be owned by the daemon's user and mode 0600, or by root"
        " and readable by the daemon's group only (0640: the daemon cannot rewrite it); see"
        " below.",
    ),
    Setting(
        "FIREWALL", "firewall", values.Choice(registry.CHOICES), "auto", "`auto`", RESTART,
        "`nftables`, `iptables`, `pktfilter`, `none`, or `auto` = what the machine has:"
        " nftables, else iptables, else none with a warning (the choice and why are logged at"
        " start). With `none` the daemon's own listener is the gate: it accepts only the"
        " knocking address. See [Firewall](#firewall).",
    ),
    Setting(
        "FIREWALL_POLICY", "firewall_policy", values.Choice(POLICIES), "ports",
        "`ports`", RESTART,
        "`ports` gates only `ASSIGN_PORT_RANGE` and leaves the host's other rules alone: the"
        " safe default, it cannot lock an admin out. `lockdown` drops every new inbound"
        " connection except the control port, loopback, established traffic and grants (the"
        " seed's \"block in all\"); it needs a `FIREWALL` other than `none`.",
    ),
    Setting(
        "ASSIGN_PORT_RANGE", "assign_port_range", values.port_range, (30000, 60999),
        "`30000-60999`", RESTART,
        "ports the daemon assigns from, at random. A wide range leaves an onlooker nothing to"
        " guess; a port in use is skipped. `UDP_PORT`, and `FORWARD_TO_PORT` on a loopback"
        " `FORWARD_TO_IP`, must lie outside.",
    ),
    Setting(
        "KNOCK_PROTO", "knock_proto", values.Choice(("tcp", "udp")), "tcp", "`tcp`", RESTART,
        "knocks are TCP SYNs (`tcp`) or UDP datagrams (`udp`). SYNs to closed ports look like"
        " every other scan on the Internet.",
    ),
    Setting(
        "KNOCK_COUNT", "knock_count", values.Integer(1, MAX_KNOCKS, "a knock count"), 4, "`4`",
        LIVE,
        "knocks per session. The sequence is random per session and travels encrypted in P1,"
        " so its length adds little secrecy; four keeps a knock fast while proving the client"
        " sends from its address.",
    ),
    Setting(
        "KNOCK_TIMEOUT", "knock_timeout", values.Seconds(1, 300), 10.0, "`10`", LIVE,
        "seconds from P1 to a completed sequence and P2; a client needs a few round trips, not"
        " more.",
    ),
    Setting(
        "MAX_CLOCK_SKEW", "max_clock_skew", values.Seconds(1, 3600), 60.0, "`60`", RESTART,
        "seconds a message's timestamp may differ from the server's clock; also how long"
        " nonces are remembered. Wide enough for clocks without NTP discipline, narrow enough to"
        " keep the replay cache small.",
    ),
    Setting(
        "REQUIRE_SOURCE_ADDRESS", "require_source_address", values.YesNo(), False, "`no`", LIVE,
        "`yes` grants only a client whose request names the address it comes from: no relay"
        " can then use a login, whichever way the client connects, but clients behind NAT"
        " cannot log in. `no` also lets in a client that names a private address (behind"
        " NAT); a request naming another public address than its source is refused either"
        " way. See [Security](docs/SECURITY.md).",
    ),
    Setting(
        "LISTEN_ADDRESS", "listen_address", values.listen_address, None, "every address",
        RESTART,
        "address of the control channel, IPv4 or IPv6; unset: one socket on each address of"
        " the host (IPv6 link-local ones aside), following the addresses that come and go, so"
        " that every answer leaves from the address the client knocked on.",
    ),
    Setting(
        "STATE_DIR", "state_dir", values.path, "/var/lib/sig2knock", "`/var/lib/sig2knock`",
        RESTART,
        "directory of the replay cache (created mode 0700; refused if writable by others). The"
        " example keeps it in `state/` of the checkout.",
    ),
)

BY_KEY = {setting.key: setting for setting in SCHEMA}
KNOWN_KEYS = tuple(BY_KEY)
REQUIRED_KEYS = tuple(setting.key for setting in SCHEMA if setting.default is REQUIRED)

RELOAD_TEXT = {
    LIVE: "next session",
    RESTART: "restart",
    LIVE_UNLESS_NAT: "next session (with `FORWARD_MODE = nat`, restart if the targets change"
    " address family or loopback)",
}

# The keys of a ``[service NAME]`` section: a named service (sig2knock.daemon.catalog).
SERVICE_SCHEMA: Tuple[Setting, ...] = (
    Setting(
        "FORWARD_TO_IP", "forward_to_ip", values.forward_address, REQUIRED, "required",
        LIVE_UNLESS_NAT,
        "address of the service: on this host (`127.0.0.1`) or on another one the gateway"
        " reaches.",
    ),
    Setting(
        "FORWARD_TO_PORT", "forward_to_port", values.port(), REQUIRED, "required",
        LIVE_UNLESS_NAT, "port of the service.",
    ),
    Setting(
        "SINGLECONN_PORTOPEN_TIME", "open_time", values.Seconds(1, 86400), None,
        "the top-level value", LIVE,
        "seconds its assigned port waits for the one connection.",
    ),
    Setting(
        "FORWARD_MODE", "forward_mode", values.Choice(("proxy", "nat")), None,
        "the top-level value", LIVE_UNLESS_NAT,
        "`proxy` or `nat`, as the top-level key; a gateway may forward some services in the"
        " kernel and proxy others (`nat` needs `FIREWALL = nftables`, `iptables` or `auto`).",
    ),
    Setting(
        "ALLOW", "allow", values.parsed_by(Access.parse), REQUIRED, "required", LIVE,
        "who may reach it: user names and `@group`s separated by spaces or commas, or `*`.",
    ),
)

# The keys of a ``[group NAME]`` section.
GROUP_SCHEMA: Tuple[Setting, ...] = (
    Setting(
        "USERS", "users", values.parsed_by(parse_users), REQUIRED, "required", LIVE,
        "the group's users, separated by spaces or commas.",
    ),
)

SECTION_SCHEMAS = {"service": SERVICE_SCHEMA, "group": GROUP_SCHEMA}


def reference_table(rows: Tuple[Setting, ...] = SCHEMA, first: str = "key") -> str:
    """
    The README's configuration reference: a Markdown table, a row per key of ``rows`` (the
    top-level keys; ``first`` names the first column).
    """
    lines = [
        f"| {first} | default | on reload | meaning and why this default |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        meaning = row.doc + (f" ({row.accepts})" if row.accepts else "")
        lines.append(f"| `{row.key}` | {row.shown} | {RELOAD_TEXT[row.reload]} | {meaning} |")
    return "\n".join(lines) + "\n"


def section_table() -> str:
    """
    The README's table of the keys of ``[service NAME]`` and ``[group NAME]`` sections.
    """
    rows = tuple(
        row._replace(key=f"[{kind}] {row.key}")
        for kind, schema in SECTION_SCHEMAS.items()
        for row in schema
    )
    return reference_table(rows, first="section key")
