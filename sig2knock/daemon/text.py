"""
Text for operators: error lines that stay one line whatever a file contained.
"""

import re

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """
    ``text`` with every control character (newlines included) shown as an escape like ``\\r``.
    """
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)
