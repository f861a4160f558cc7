"""
The client, ``sig2knockc``'s library: the knock exchange (``knocker``), the relay of
``--stdio`` (``relay``), the saved key (``keyfile``) and the platform branches (``portable``).
It imports ``sig2knock.protocol`` only: no Twisted, no daemon code.
"""
