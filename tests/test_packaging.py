"""
The sources that packaging is made from agree with the code (checkout only, no root needed):
the man pages in docs/man/ are what packaging/make-man makes from the commands' parsers and the
README's configuration reference, and that reference names every configuration key.
"""

import argparse
import importlib.util
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon.schema import KNOWN_KEYS
from sig2knock.scripts import client, daemon, useradd
from tests.lab import REPOSITORY

MAKE_MAN = os.path.join(REPOSITORY, "packaging", "make-man")
MAN = os.path.join(REPOSITORY, "docs", "man")


class ManPageTests(SynchronousTestCase):
    """
    docs/man/ cannot drift from --help and the configuration reference.
    """

    if importlib.util.find_spec("argparse_manpage") is None:
        skip = "needs argparse-manpage (the [dev] extra, which ./bootstrap installs)"

    def test_upToDate(self) -> None:
        done = subprocess.run(
            [sys.executable, MAKE_MAN, "--check"], capture_output=True, text=True, timeout=120
        )
        self.assertEqual(done.returncode, 0, done.stderr)

    def test_everyOptionDocumented(self) -> None:
        for page, parser in (
            ("sig2knockd.8", daemon.build_parser()),
            ("sig2knockc.1", client.build_parser()),
            ("sig2knockd_useradd.8", useradd.build_parser()),
        ):
            with open(os.path.join(MAN, page), encoding="utf-8") as text:
                roff = text.read().replace("\\-", "-")
            for action in parser._actions:
                if isinstance(action, argparse._HelpAction):
                    continue  # every man page leaves -h out
                for option in action.option_strings:
                    self.assertIn(option, roff, f"{page}: {option}")

    def test_everyKeyDocumented(self) -> None:
        with open(os.path.join(MAN, "sig2knockd.conf.5"), encoding="utf-8") as text:
            roff = text.read().replace("\\-", "-")
        for key in KNOWN_KEYS:
            self.assertIn(f".TP\n\\fB{key}\\fR (", roff, key)
