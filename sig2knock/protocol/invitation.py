"""
Invitations: one line that tells a client everything it needs to knock on a server, and nothing
secret: the host, the control port, the server's public key, the user name, for a password user
the scrypt parameters, and the hidden service to ask for when it is not the default one.
``sig2knockd_useradd --host HOST`` prints one as the last line of its output; ``sig2knockc
--invite`` knocks with it and ``sig2knockc --import`` stores it.

The form is ``sig2knock:`` followed by the unpadded base64url of a small JSON object (``v``,
``host``, ``port``, ``key``, ``user``, for a password user ``kdf``, and ``service`` when it is
not the default one), so a host of any kind (a name, IPv4, IPv6) survives copying and pasting.

This module is imported by the client: it must not import Twisted.
"""

import base64
import binascii
import json
from typing import NamedTuple, Optional

from sig2knock.protocol.kdf import KdfError, KdfParams, check_user_name
from sig2knock.protocol.keys import KeyFormatError, format_public_key, parse_public_key
from sig2knock.protocol.names import DEFAULT_SERVICE, ServiceNameError, check_service_name

PREFIX = "sig2knock:"
VERSION = 2


class InvitationError(ValueError):
    """
    A text is not a usable invitation; the message says why.
    """


class Invitation(NamedTuple):
    """
    A server as an invitation names it, and the user it was made for.
    """

    host: str
    port: int
    server_key: bytes
    user: str
    kdf: Optional[KdfParams]
    service: str = DEFAULT_SERVICE

    def format(self) -> str:
        """
        The invitation's one line.
        """
        fields = {
            "v": VERSION,
            "host": self.host,
            "port": self.port,
            "key": format_public_key(self.server_key),
            "user": self.user,
        }
        if self.kdf is not None:
            fields["kdf"] = self.kdf.format()
        if self.service != DEFAULT_SERVICE:
            fields["service"] = self.service
        packed = json.dumps(fields, separators=(",", ":")).encode("utf-8")
        return PREFIX + base64.urlsafe_b64encode(packed).decode("ascii").rstrip("=")


def parse_invitation(text: str) -> Invitation:
    """
    Read an invitation line; raises ``InvitationError``.
    """
    text = text.strip()
    if not text.startswith(PREFIX):
        raise InvitationError(f"an invitation starts with {PREFIX!r}")
    encoded = text[len(PREFIX):]
    try:
        fields = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (binascii.Error, ValueError):
        raise InvitationError("the invitation is damaged (copy it whole, on one line)") from None
    if not isinstance(fields, dict) or fields.get("v") != VERSION:
        raise InvitationError("an invitation of another version of sig2knock")
    try:
        host, port = fields["host"], fields["port"]
        if not isinstance(host, str) or not host or not isinstance(port, int):
            raise InvitationError("the invitation names no server")
        if not host.isprintable() or any(char in host for char in " []#;="):
            raise InvitationError("the invitation's host is not a host name or address")
        if not 0 < port < 65536:
            raise InvitationError(f"the invitation's port {port} is not a port number")
        kdf = KdfParams.parse(fields["kdf"]) if "kdf" in fields else None
        service = check_service_name(fields["service"]) if "service" in fields else ""
        return Invitation(
            host, port, parse_public_key(fields["key"]), check_user_name(fields["user"]), kdf,
            service,
        )
    except KeyError as missing:
        raise InvitationError(f"the invitation has no {missing.args[0]}") from None
    except (KdfError, KeyFormatError, ServiceNameError, TypeError) as error:
        raise InvitationError(f"the invitation is not valid: {error}") from None
