"""An exception as one line of a message: SDKs and parsers (W&B, the Hub client, YAML, Ray)
put several lines in theirs, and trm-ray's errors and warnings are one line each."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of the error's message, its white space folded; its type's name when the
    message is empty."""
    lines = str(error).strip().splitlines()
    return " ".join(lines[0].split()) if lines else type(error).__name__


def last_line(error: BaseException) -> str:
    """The last line of the message (a Ray task error ends with the exception it re-raises), its
    white space folded; its type's name when the message is empty."""
    lines = str(error).strip().splitlines()
    return " ".join(lines[-1].split()) if lines else type(error).__name__
