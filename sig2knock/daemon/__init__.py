"""
The daemon: settings and users, the control channel (with replay cache, rate limits and
refusals), the knock capture (filter, packet parsing, interface watching), the sessions, the
grants and their forwarding, and the service that wires them; ``tap`` is the twistd plugin.
"""
