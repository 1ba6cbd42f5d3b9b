"""What can go wrong in a benchmark run, by how far it reaches."""

from __future__ import annotations


class BenchError(Exception):
    """Something that makes a figure meaningless: a tool failed, the tunnel carried nothing."""


class Fatal(BenchError):
    """The run cannot go on (the tunnel does not carry the smoke request)."""


class TimeLimit(Exception):
    """--time-limit ran out."""
