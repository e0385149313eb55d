"""argparse types for numeric flags: a value out of range is one line, exit code 2.

    parser.add_argument("--batch_size", type=positive_int, default=256)

gives `toxjax score: error: argument --batch_size: must be a positive integer, got '0'`
before anything runs, instead of a run that loops forever on empty batches or a
traceback later.
"""

from __future__ import annotations

import argparse


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (0 usually meaning "off" or "no limit")."""
    value = _int(text, "0 or a positive integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text!r}")
    return value
