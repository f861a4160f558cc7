"""
The client's configuration of servers: ``~/.config/sig2knock/servers.conf`` (``%APPDATA%`` on
Windows), one section per server, as ssh_config has hosts and ``~/.fwknoprc`` stanzas::

    [myserver]
    host = server.example.org
    port = 1001
    key = e06Qm75//kTEZaIgA31gjuNYl9Me+XLwf3SJLLD3PxM=
    user = alice
    kdf = scrypt:n=32768,r=8,p=1
    service = rdp

(``service``, when present, is the hidden service that section asks for; without it, the
server's default one). ``sig2knockc --import INVITATION [--name NAME] [--service NAME]`` writes
a section; ``sig2knockc NAME`` knocks with
one, and ``sig2knockc HOST PORT`` finds the server's key in the section for that host and port.
Nothing here is secret (the keys are public); the file is written atomically, mode 0600 like the
client's other files. Twisted-free, for the client; loaded only when a command needs it.
"""

import os
from typing import Dict, Optional, Tuple

from sig2knock.client.portable import config_home, write_private
from sig2knock.protocol.invitation import Invitation
from sig2knock.protocol.kdf import KdfError, KdfParams, check_user_name
from sig2knock.protocol.keys import KeyFormatError, format_public_key, parse_public_key
from sig2knock.protocol.names import ServiceNameError, check_service_name

FILE_NAME = "servers.conf"


class ServersError(Exception):
    """
    The servers file cannot be read or written; the message says which line or why.
    """


def servers_path() -> str:
    """
    Where the client's servers are kept.
    """
    return os.path.join(config_home(), FILE_NAME)


def load_servers(path: str) -> Dict[str, Invitation]:
    """
    The servers of the file at ``path`` by name (none when there is no file); raises
    ``ServersError`` for a broken one.
    """
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as source:
            parser.read_file(source)
    except FileNotFoundError:
        return {}
    except (OSError, configparser.Error, UnicodeDecodeError) as error:
        raise ServersError(f"{path}: {error}") from None
    servers = {}
    for name in parser.sections():
        section = parser[name]
        try:
            kdf = KdfParams.parse(section["kdf"]) if "kdf" in section else None
            service = check_service_name(section["service"]) if "service" in section else ""
            servers[name] = Invitation(
                section["host"],
                int(section["port"]),
                parse_public_key(section["key"]),
                check_user_name(section["user"]),
                kdf,
                service,
            )
        except KeyError as missing:
            raise ServersError(f"{path}: [{name}] has no {missing.args[0]}") from None
        except (ValueError, KdfError, KeyFormatError, ServiceNameError) as error:
            raise ServersError(f"{path}: [{name}]: {error}") from None
    return servers


def save_server(path: str, name: str, server: Invitation) -> None:
    """
    Add (or replace) the section ``name`` for ``server`` in the file at ``path``.
    """
    import configparser

    if not name or any(char in name for char in "[]\n\r") or name != name.strip():
        raise ServersError(f"{name!r} cannot name a server (no brackets, no line breaks)")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as source:
            parser.read_file(source)
    except FileNotFoundError:
        pass
    except (OSError, configparser.Error) as error:
        raise ServersError(f"{path}: {error}") from None
    parser[name] = {
        "host": server.host,
        "port": str(server.port),
        "key": format_public_key(server.server_key),
        "user": server.user,
    }
    if server.kdf is not None:
        parser[name]["kdf"] = server.kdf.format()
    if server.service:
        parser[name]["service"] = server.service
    import io

    text = io.StringIO()
    parser.write(text)
    try:
        write_private(path, text.getvalue())
    except OSError as error:
        raise ServersError(f"{path}: cannot write it: {error.strerror or error}") from None


def find_server(
    servers: Dict[str, Invitation], host: str, port: int
) -> Optional[Tuple[str, Invitation]]:
    """
    The configured server with ``host`` and ``port``, if there is one.
    """
    for name, server in servers.items():
        if (server.host, server.port) == (host, port):
            return name, server
    return None
