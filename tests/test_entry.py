"""The console script's fast answers (zflash/__main__.py, D180): the same bytes as the click CLI,
without importing click, and click for everything the fast path is not sure of."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from zflash import __main__ as entry
from zflash.cli import main
from zflash.errors import TABLE


def _script(args: list[str], env: dict[str, str] | None = None,
            **kwargs) -> subprocess.CompletedProcess:
    """Run ``entry.run`` as the `zflash` script does (argv[0] "zflash", __main__ a script),
    and list on stderr's last line whether click was imported."""
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: sys.stderr.write("
             "'\\nclick loaded: %s' % ('click' in sys.modules)))\n"
             "sys.argv = ['zflash'] + sys.argv[1:]\nfrom zflash.__main__ import run\nrun()\n")
    return subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})}, **kwargs)


@pytest.mark.parametrize("columns", ["80", "200"])
def test_root_help_is_what_click_renders(columns):
    """ROOT_HELP is click's own help for `zflash` at 80+ columns: if a command or option
    changes, this fails and ROOT_HELP must be regenerated from click's output."""
    result = subprocess.run(
        [sys.executable, "-c", "from zflash.cli import main\nmain(['--help'], prog_name='zflash')"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": columns})
    assert result.returncode == 0
    assert result.stdout == entry.ROOT_HELP


@pytest.mark.parametrize("code", sorted(TABLE))
def test_fast_error_entry_is_what_click_prints(code):
    for typed in (str(code), str(code - 9000)):
        clicked = CliRunner().invoke(main, ["errors", typed], prog_name="zflash")
        assert clicked.exit_code == 0
        assert entry.fast_answer(["errors", typed]) == clicked.output


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["errors", "9012"], ["errors", "40"]])
def test_fast_answers_do_not_import_click(args):
    result = _script(args)
    assert result.returncode == 0, result.stderr
    assert result.stderr.endswith("click loaded: False")
    expected = entry.ROOT_HELP if args[0] != "errors" else entry.fast_answer(args)
    assert result.stdout == expected


@pytest.mark.parametrize("args, env", [
    (["--help"], {"COLUMNS": "60"}),              # narrow: click wraps differently
    (["--help"], {"_ZFLASH_COMPLETE": "bash_source"}),  # completion is click's
    (["errors", "9999"], {}),                     # no such code: click's usage error
    (["errors", "nine"], {}),                     # not a number: click's usage error
    (["errors", "9012", "--json"], {}),
    (["-q", "--help"], {}),
])
def test_anything_else_goes_to_click(args, env):
    result = _script(args, env)
    assert result.stderr.endswith("click loaded: True")


def test_unknown_code_is_still_a_coded_usage_error():
    result = _script(["errors", "9999"])
    assert result.returncode == 2
    assert "error 9002" in result.stderr


def test_narrow_terminal_help_is_clicks():
    result = _script(["--help"], {"COLUMNS": "60"})
    assert result.returncode == 0
    assert result.stdout != entry.ROOT_HELP and "Usage: zflash" in result.stdout


def test_python_dash_m_help_names_python_dash_m():
    """`python -m zflash --help` keeps click's program name (the fast text says `zflash`)."""
    result = subprocess.run([sys.executable, "-m", "zflash", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: python -m zflash [OPTIONS]")


def test_fast_answer_to_a_closed_pipe_exits_quietly():
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-c", "import sys\nsys.argv = ['zflash', 'errors', '9012']\n"
             "from zflash.__main__ import run\nrun()"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 141


def test_the_quick_exit_keeps_output_and_atexit_handlers(tmp_path):
    """D188: after a click command the process ends without the interpreter's teardown,
    but all of stdout arrives and atexit handlers (weakref finalizers, logging) still run."""
    marker = tmp_path / "atexit-ran"
    probe = ("import atexit, pathlib, sys\n"
             f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes')\n"
             "sys.argv = ['zflash', 'errors', '--json']\n"
             "from zflash.__main__ import run\nrun()\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == len(TABLE)
    assert marker.read_text() == "yes"


def test_the_quick_exit_keeps_the_exit_status():
    result = _script(["errors", "--markdown", "--json", "--no-such-option"])
    assert result.returncode == 2
    assert "error 9002" in result.stderr
