"""trm_ray.errors: an exception as one line of a message."""

from __future__ import annotations

from trm_ray.errors import first_line, last_line


def test_first_and_last_line_of_an_error():
    error = RuntimeError("  could not  connect\n  to the\tserver\nTimeoutError: after 30 s \n")
    assert first_line(error) == "could not connect"
    assert last_line(error) == "TimeoutError: after 30 s"
    # an empty message: the type says what happened
    assert first_line(ValueError()) == "ValueError" and last_line(KeyboardInterrupt("  ")) == "KeyboardInterrupt"
