"""Argument checks shared by the methods' settings and configs."""

from __future__ import annotations


def check_int(value: object, name: str, minimum: int) -> None:
    """TypeError unless ``value`` is an int (bool is not one), ValueError below ``minimum``; both name it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
