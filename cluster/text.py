"""What names, ids and case references may hold: no control characters (NUL, newlines) and no bidi overrides,
which would let a record read differently in a log, a CSV or a console than it is. And what a JSON number may be."""

from __future__ import annotations

import math
import re

from cluster.errors import InvalidRequest

UNSAFE_CHARACTERS = "\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069"
UNSAFE = re.compile(f"[{UNSAFE_CHARACTERS}]")
# The same rules for a JSON schema (ECMA regex): a text holding none of them; and one that is not blank too.
SAFE_TEXT_PATTERN = f"^[^{UNSAFE_CHARACTERS}]*$"
SAFE_NON_BLANK_PATTERN = f"^[^{UNSAFE_CHARACTERS}]*[^{UNSAFE_CHARACTERS}\\s][^{UNSAFE_CHARACTERS}]*$"


def check_text(value: str | None, what: str) -> None:
    """InvalidRequest, naming the first unsafe character, where `value` holds one."""
    found = UNSAFE.search(value) if value else None
    if found is not None:
        raise InvalidRequest(f"{what} holds the control or bidi character U+{ord(found.group()):04X}")


def is_finite_number(value: object) -> bool:
    """A finite JSON number, not a boolean: JSON's integers have no size limit, and one past a float's range is not
    one (math.isfinite raises on it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
