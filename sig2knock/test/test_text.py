"""
Tests for sig2knock.daemon.text: whatever a file held, an error line stays one line.
"""

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon.text import one_line
from sig2knock.test.properties import given, settings, st


class OneLineTests(SynchronousTestCase):
    """
    Control characters are shown as escapes; everything else is kept as it is.
    """

    def test_controlCharactersEscaped(self) -> None:
        self.assertEqual(one_line("a\nb\rc\td\x00e\x1b[31m"), "a\\nb\\rc\\td\\x00e\\x1b[31m")

    def test_unicodeLineBreaksEscaped(self) -> None:
        self.assertEqual(one_line("a\u2028b\u2029c\x85d"), "a\\u2028b\\u2029c\\x85d")

    def test_printableKept(self) -> None:
        self.assertEqual(one_line("café = 'x' # ok"), "café = 'x' # ok")

    @given(st.text())
    @settings(max_examples=500, deadline=None)
    def test_neverSplits(self, text: str) -> None:
        self.assertEqual(len(one_line(text).splitlines()), 1 if text else 0)
