"""The `realtime` command line: subcommands parse and hand over as documented."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from server import STAFF_TOKEN, ServerProcess, free_port

from realtime import devtoken
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


# -- `realtime demo` and `realtime serve --dev` against real servers ---------------------------


@pytest.fixture(scope="module")
def demo_server() -> Iterator[ServerProcess]:
    process = ServerProcess().start()
    yield process
    process.stop()


def test_demo_uses_realtime_port_and_prints_every_code(
    demo_server: ServerProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --url the demo finds the server at REALTIME_PORT and prints one access code per
    candidate (12, not 10)."""
    monkeypatch.setenv("REALTIME_PORT", str(demo_server.port))
    monkeypatch.setenv("REALTIME_STAFF_TOKEN", STAFF_TOKEN)
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert f"http://127.0.0.1:{demo_server.port}/dashboard/?exam=" in out
    codes = re.findall(r"code ([A-Z0-9]{8}) ", out)
    assert len(codes) == 12 == len(set(codes))
    assert main(["demo", "--candidates", "3", "--url", demo_server.url]) == 0
    assert len(re.findall(r"code [A-Z0-9]{8} ", capsys.readouterr().out)) == 3


def test_demo_with_a_wrong_token_says_so_in_one_line(
    demo_server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 401 ends with one clear line on stderr and exit status 1, no traceback."""
    assert main(["demo", "--url", demo_server.url, "--token", "wrong"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "401" in err and "staff token" in err
    assert "Traceback" not in err


def test_demo_without_a_server_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused connection names the URL it tried, in one line, exit status 1."""
    port = free_port()  # nobody listens there
    monkeypatch.setenv("REALTIME_PORT", str(port))
    assert main(["demo", "--token", "x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot reach http://127.0.0.1:{port}" in err
    assert main(["demo", "--url", f"http://127.0.0.1:{port}", "--token", ""]) == 2
    assert "no staff token" in capsys.readouterr().err


def test_dev_token_is_kept_next_to_the_sqlite_file(tmp_path: Path) -> None:
    """The dev token lives in a file beside the database, readable by its owner only, and is
    the same at every load."""
    path = devtoken.token_path(f"sqlite+aiosqlite:///{tmp_path / 'rt.db'}")
    assert path == tmp_path / devtoken.FILE_NAME
    token = devtoken.load_or_create(path)
    assert token.startswith("dev-") and devtoken.load_or_create(path) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _dev_token_of_a_run(tmp_path: Path) -> str:
    """Start `realtime serve --dev` in tmp_path, read the token it prints, stop it."""
    port = free_port()
    env = {**os.environ, "REALTIME_PORT": str(port), "REALTIME_STAFF_TOKEN": "",
           "REALTIME_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'realtime.db'}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "realtime.cli", "serve", "--dev", "--log-level", "warning"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # printed before uvicorn starts; bounded by the test timeout
            if "sign in to the dashboard" in line:
                assert f"http://127.0.0.1:{port}/dashboard/#token=dev-" in line
                return line.rsplit("#token=", 1)[1].strip()
        raise AssertionError("serve --dev printed no sign-in link")
    finally:
        process.terminate()
        process.wait(10)


def test_serve_dev_keeps_its_token_across_restarts(tmp_path: Path) -> None:
    """Two runs of `realtime serve --dev` print the same token and sign-in link."""
    first = _dev_token_of_a_run(tmp_path)
    assert _dev_token_of_a_run(tmp_path) == first
    assert (tmp_path / devtoken.FILE_NAME).read_text().strip() == first


def test_scripts_serve_installs_only_when_needed(tmp_path: Path) -> None:
    """scripts/serve installs on the first start (and says so), not on the next, and again
    after pyproject.toml changed. (`.venv` is a stub that records what it is asked to do.)"""
    root = Path(__file__).resolve().parent.parent
    (tmp_path / "scripts").mkdir()
    serve = tmp_path / "scripts" / "serve"
    serve.write_text((root / "scripts" / "serve").read_text())
    serve.chmod(0o755)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    calls = tmp_path / "calls"
    for name in ("python", "realtime"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n')
        stub.chmod(0o755)

    def start() -> tuple[list[str], str]:
        calls.write_text("")
        done = subprocess.run([str(serve)], capture_output=True, text=True, timeout=30,
                              check=True)
        return calls.read_text().splitlines(), done.stderr

    first, said = start()
    assert any("pip install" in c and "-e ." in c for c in first)
    assert "installing realtime" in said and first[-1] == "realtime serve --dev"
    again, said = start()
    assert again == ["realtime serve --dev"] and said == ""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\nversion = '2'\n")
    changed, _ = start()
    assert any("-e ." in c for c in changed)
