"""
The example files of ``etc/`` in the sources, shipped inside the package so that an installed
sig2knock has them too: ``sig2knockd.conf`` (the example configuration), ``user.txt.example``
(a users file) and ``sig2knockd.service`` (the systemd unit). In a checkout they are links to
``etc/``; in a wheel, copies. ``python -m sig2knock.examples`` prints where they are.
"""

import os

DIRECTORY = os.path.dirname(os.path.abspath(__file__))
NAMES = ("sig2knockd.conf", "user.txt.example", "sig2knockd.service")


def path(name: str) -> str:
    """
    The path of the example file ``name`` (one of ``NAMES``).
    """
    if name not in NAMES:
        raise ValueError(f"no example file {name!r}; there are {', '.join(NAMES)}")
    return os.path.join(DIRECTORY, name)


if __name__ == "__main__":
    for example in NAMES:
        print(path(example))
