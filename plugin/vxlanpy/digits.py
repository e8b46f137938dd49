"""Whole numbers typed by a user (options, settings, ports): ASCII digits only, within bounds.

`str.isdigit()` is true for "²" (which `int()` refuses) and for "١٢" (which `int()` reads as 12), and `int()`
refuses strings of more than 4300 digits: none of them may decide what a user's value means.  Every place that
turns user text into a number goes through `ascii_int`.
"""

from __future__ import annotations

ASCII_DIGITS = frozenset("0123456789")


def ascii_int(raw: str, low: int, high: int) -> int | None:
    """The value of `raw` when it is one or more ASCII digits 0-9 (no sign, no space) and within
    low..high; None otherwise, for the caller to refuse with a message naming the setting."""
    if not raw or not ASCII_DIGITS.issuperset(raw):
        return None
    significant = raw.lstrip("0") or "0"
    if len(significant) > len(str(high)):  # also keeps int() away from its 4300-digit limit
        return None
    value = int(significant)
    return value if low <= value <= high else None
