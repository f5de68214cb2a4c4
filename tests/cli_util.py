"""What the command-line tests check of a failed command: one line, `Error: ...`, non-zero exit."""

from __future__ import annotations


def assert_one_line_failure(result, *words):
    """`result` (click's CliRunner result) failed with exactly one non-blank line of output, an
    `Error: ` line holding every one of `words`."""
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for word in words:
        assert word in lines[0], (word, lines[0])
