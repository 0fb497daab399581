"""Sizes and rates written for people: ``"100M"``, ``"2G"``, ``512K``."""

from __future__ import annotations

import math

from .errors import ConfigError

__all__ = ["parse_size", "positive_number"]

_UNITS = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}


def positive_number(value: object) -> bool:
    """True for a finite int or float above zero (a bool is not a number here)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def parse_size(text: str | int, what: str = "size") -> int:
    """``"100M"`` -> 104857600: bytes, or a number with K, M, G or T (powers of 1024).

    Raises:
        ConfigError: it is not such a size; the message names ``what``.
    """
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    number, unit = str(text).strip().upper().removesuffix("B"), ""
    if number[-1:] in _UNITS:
        number, unit = number[:-1], number[-1]
    if not number.isdigit():
        raise ConfigError(f"{what}: {text!r} is not a size such as 1048576, 512K, 100M or 2G")
    return int(number) << _UNITS[unit]
