"""
The name of a hidden service, as a client asks for it in P1 and a server's configuration defines
it (``[service NAME]``): 1-32 lower-case letters, digits and ``_ . -``, starting with a letter
or a digit. The empty name is the default service; ``default`` is its name for people, so no
service may be called that (``sig2knockc --service default`` asks for the default one).

This module is imported by the client: it must not import Twisted.
"""

import re

DEFAULT_SERVICE = ""
DEFAULT_LABEL = "default"
SERVICE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")


class ServiceNameError(ValueError):
    """
    A text is not a service name; the message says what one is.
    """


def check_service_name(name: str) -> str:
    """
    Return ``name`` if it can name a service, otherwise raise ``ServiceNameError``.
    """
    if not isinstance(name, str) or not SERVICE_NAME_RE.fullmatch(name):
        raise ServiceNameError(
            f"service name {name!r} is not valid: use 1-32 lower-case letters, digits and _ . -"
            " (starting with a letter or a digit)"
        )
    if name == DEFAULT_LABEL:
        raise ServiceNameError(
            f"{DEFAULT_LABEL!r} is the default service's name (the top-level FORWARD_TO_* keys);"
            " a named service needs another"
        )
    return name
