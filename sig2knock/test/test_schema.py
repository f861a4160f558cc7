"""
Tests for ``sig2knock.daemon.schema``: the rows are whole, and the shipped example configuration
names every key, its commented-out lines showing the defaults the schema gives.
"""

import re

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.daemon import schema
from sig2knock.test.common import EXAMPLE_CONFIG


class SchemaTests(SynchronousTestCase):
    """
    One row per key, each complete.
    """

    def test_rowsAreWhole(self) -> None:
        self.assertEqual(len({row.attribute for row in schema.SCHEMA}), len(schema.SCHEMA))
        for row in schema.SCHEMA:
            with self.subTest(key=row.key):
                self.assertRegex(row.key, r"^[A-Z_]+$")
                self.assertEqual(row.attribute, row.key.lower())
                self.assertIn(row.reload, schema.RELOAD_TEXT)
                self.assertTrue(row.doc and row.shown)
                self.assertEqual(row.default is schema.REQUIRED, row.shown == "required")

    def test_tableHasARowPerKey(self) -> None:
        table = schema.reference_table().splitlines()
        self.assertEqual(len(table), 2 + len(schema.SCHEMA))
        self.assertIn("| `KNOCK_COUNT` | `4` | next session | knocks per session.", table[16])
        self.assertTrue(table[16].endswith("(1-64) |"), table[16])


class ExampleConfigTests(SynchronousTestCase):
    """
    ``etc/sig2knockd.conf`` mentions every key; each key it leaves commented out shows its
    default.
    """

    def test_everyKeyShownWithItsDefault(self) -> None:
        with open(EXAMPLE_CONFIG, encoding="utf-8") as example:
            text = example.read()
        for row in schema.SCHEMA:
            with self.subTest(key=row.key):
                match = re.search(rf"^(#?){row.key} = (.*)$", text, re.M)
                self.assertIsNotNone(match, f"{row.key} is not in the example")
                commented, value = match.group(1), match.group(2)
                if commented and row.default is not None:
                    self.assertEqual(row.parse(value), row.default)
