"""
Command-line entry points: ``sig2knockd``, ``sig2knockc`` and ``sig2knockd_useradd``.
"""
