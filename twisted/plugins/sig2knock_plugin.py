"""
The twistd drop-in: ``twistd -n sig2knock --config etc/sig2knockd.conf``. All logic is in
sig2knock.daemon.tap.
"""

from twisted.application.service import ServiceMaker

sig2knock = ServiceMaker(
    "sig2knock",
    "sig2knock.daemon.tap",
    "Port-knocking daemon: hide a service behind a closed host",
    "sig2knock",
)
