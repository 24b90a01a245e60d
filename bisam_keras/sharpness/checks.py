"""Argument checks for `bisam_keras.sharpness`: each error names the argument and its value."""

import math
import numbers


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_float(name, value):
    """`value` as a float, or a ValueError unless it is a finite number > 0."""
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a finite number > 0. Received: {name}={value!r}")
    return float(value)


def non_negative_float(name, value):
    """`value` as a float, or a ValueError unless it is a finite number >= 0."""
    if not (_is_number(value) and math.isfinite(value) and value >= 0):
        raise ValueError(f"`{name}` must be a finite number >= 0. Received: {name}={value!r}")
    return float(value)


def positive_int(name, value):
    """`value` as an int, or a ValueError unless it is an integer >= 1."""
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"`{name}` must be an integer >= 1. Received: {name}={value!r}")
    return int(value)


def optional_positive_int(name, value):
    """`None`, or `value` as an int >= 1 (see `positive_int`)."""
    return None if value is None else positive_int(name, value)


def non_negative_int(name, value):
    """`value` as an int, or a ValueError unless it is an integer >= 0."""
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0):
        raise ValueError(f"`{name}` must be an integer >= 0. Received: {name}={value!r}")
    return int(value)


def choice(name, value, choices):
    """`value`, or a ValueError unless it is one of `choices`."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}. Received: {name}={value!r}")
    return value


def boolean(name, value):
    """`value`, or a ValueError unless it is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return value
