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
