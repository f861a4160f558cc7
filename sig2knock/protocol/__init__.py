"""
What the client and the daemon share: the message format (``wire``), addresses and protocol
numbers (``addresses``), key derivation (``kdf``), the key-line format (``keyline``) and the
cipher (``cipher``). No Twisted here: the client imports this package on every platform.
"""
