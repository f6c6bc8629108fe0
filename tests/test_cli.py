"""Every registered ``crop`` command resolves to a module with ``add_arguments`` and ``run``."""

import argparse
import importlib

import pytest

from crop.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_module_exposes_the_protocol(name):
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"crop {name}")
    module.add_arguments(parser)
    assert callable(module.run)
    assert parser.format_help().startswith(f"usage: crop {name}")


def test_unknown_command_names_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and "validate" in err


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_version(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"crop-toolkit {version('crop-toolkit')}"


@pytest.mark.parametrize("argv", [["eval", "--config", "/nonexistent/eval.yaml"],
                                  ["train-plc", "--config", "/nonexistent/plc.yaml"],
                                  ["train-localizer", "--config", "/nonexistent/loc.yaml"]])
def test_user_error_is_one_line_with_exit_2(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"crop {argv[0]}: error: ") and "/nonexistent/" in err


def test_debug_shows_the_traceback(capsys):
    assert main(["--debug", "eval", "--config", "/nonexistent/eval.yaml"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "FileNotFoundError" in err


def _fake_command(monkeypatch, exc):
    import sys
    import types

    mod = types.ModuleType("crop_test_fake_cmd")
    mod.add_arguments = lambda parser: None

    def run(args):
        raise exc

    mod.run = run
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(COMMANDS, "fake", (mod.__name__, "a command that fails"))


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only the user-error types become one line: anything else is a bug and must surface whole."""
    _fake_command(monkeypatch, RuntimeError("internal bug"))
    with pytest.raises(RuntimeError, match="internal bug"):
        main(["fake"])


def test_multiline_user_error_is_folded_to_one_line(monkeypatch, capsys):
    _fake_command(monkeypatch, ValueError("config.yaml: unknown field 'lrr'\n  did you mean 'lr'?"))
    assert main(["fake"]) == 2
    assert capsys.readouterr().err == "crop fake: error: config.yaml: unknown field 'lrr' did you mean 'lr'? (--debug shows the traceback)\n"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help(name):
    """`crop <command> --help` explains every option (a new user's only documentation at hand)."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"crop {name}")
    module.add_arguments(parser)
    bare = [a.option_strings or [a.dest] for a in parser._actions
            if not a.help and not isinstance(a, argparse._HelpAction)]
    assert not bare, f"crop {name}: options without help: {bare}"


def test_beam_runner_options_have_help():
    import contextlib
    import io

    from pipelines.main import parse_args

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse_args(["--help"])
    lines = out.getvalue().splitlines()
    flags = [ln.strip() for ln in lines if ln.startswith("  --")]
    # an option whose help is on its own line is followed by an indented help line
    for i, ln in enumerate(lines):
        if ln.startswith("  --") and len(ln.split()) == 1:
            assert lines[i + 1].startswith(" " * 10), f"{ln.strip()} has no help"
    assert flags
