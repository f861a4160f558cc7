"""
sig2knock: port knocking with authenticated encryption.

A server shows no open port; a user who holds a key knocks a secret, per-session sequence of ports,
gets a fresh random port opened for their address alone, and reaches the hidden service through it.

The client imports this package: nothing here may import Twisted.
"""

__version__ = "0.1.0"
