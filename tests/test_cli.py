"""The `realtime` command line: subcommands parse and hand over as documented."""

from __future__ import annotations

import pytest

from realtime.cli import main


def test_bench_hands_every_option_to_the_harness(capsys: pytest.CaptureFixture[str]) -> None:
    """`realtime bench --help` is the benchmark's own help, options included."""
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    assert "--sizes" in capsys.readouterr().out


def test_unknown_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A typo gets argparse's usage error (exit 2), not a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(["serv"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
