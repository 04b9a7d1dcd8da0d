"""Running the ``edvae`` command in-process, and the one-line error every user mistake must end in."""

from __future__ import annotations

from typer.testing import CliRunner

from edvae.cli import app


def invoke(*args: object):
    """``edvae ARGS`` in this process (stdout and stderr kept apart)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, expected: str, code: int = 2) -> str:
    """Exit ``code``, exactly one stderr line ``error: ...`` containing ``expected``, no traceback."""
    assert isinstance(result.exception, SystemExit), f"escaped: {result.exception!r}\n{result.stderr}"
    assert result.exit_code == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert expected in lines[0], lines[0]
    return lines[0]
