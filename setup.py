"""Packaging for sig2knock: the daemon, the client and the twistd plugin."""

from setuptools import setup

setup(
    name="sig2knock",
    version="0.1.0",
    description="Port knocking with authenticated encryption: hide a service behind a closed host",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    # "twisted.plugins" is listed, but this repository's twisted/ and twisted/plugins/ have no
    # __init__.py: the drop-in file lands in Twisted's own plugin folder without shadowing Twisted.
    packages=["sig2knock", "sig2knock.scripts", "sig2knock.test", "twisted.plugins"],
    install_requires=[
        "twisted>=22.10",
        "pycryptodome>=3.15",
        "pcapy-ng>=1.0.9",
        "zope.interface>=5",
    ],
    extras_require={"test": ["hypothesis>=6"]},
    entry_points={
        "console_scripts": [
            "sig2knockd = sig2knock.scripts.daemon:main",
            "sig2knockc = sig2knock.scripts.client:entry_point",
            "sig2knockd_useradd = sig2knock.scripts.useradd:main",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Operating System :: POSIX :: Linux",
        "Topic :: System :: Networking :: Firewalls",
        "Topic :: Security",
    ],
)
