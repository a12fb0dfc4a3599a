"""The command registry and the command contract (runtime/command.py): every
command of ``python -m mit_semseg`` is one registered module with
``build_parser`` / ``main``, its ``--help`` (and each subcommand's) exits 0,
usage errors exit 2, no module of the package reaches into argparse's private
attributes, and round 2's ``python -m mit_semseg.<module>`` paths name the
command that replaced them."""
from __future__ import annotations

import argparse
import ast
import inspect
import os
import subprocess
import sys

import pytest

from mit_semseg import commands
from mit_semseg.runtime.command import (CommandParser, command_parser, parse_command,
                                        parse_subcommand, subcommand_parser)

from _support import ROOT

PACKAGE = os.path.join(ROOT, "mit_semseg")


def _status(fn, *args) -> int:
    """Exit status of a command's ``main``, whether it returns it or argparse exits."""
    try:
        return fn(*args)
    except SystemExit as exc:
        return 0 if exc.code is None else exc.code


def test_every_module_under_commands_is_registered():
    folder = os.path.join(PACKAGE, "commands")
    modules = {f[:-3] for f in os.listdir(folder)
               if f.endswith(".py") and not f.startswith("_")}
    assert modules == {cmd.module for cmd in commands.COMMANDS.values()}


def test_top_level_help_lists_every_command(capsys):
    assert commands.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, cmd in commands.COMMANDS.items():
        assert f"  {name:14s} {cmd.summary}" in out
    assert commands.main(["no-such-command"]) == 2
    assert "error: unknown command 'no-such-command'" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(commands.COMMANDS))
def test_command_is_on_the_contract(name, capsys):
    module = commands.load(name)
    parser = module.build_parser()
    assert isinstance(parser, CommandParser)
    source = inspect.getsource(module)
    assert "run_command(" in source and ("parse_command(" in source
                                         or "parse_subcommand(" in source)
    assert _status(module.main, ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {parser.prog}") and "options:" in out
    assert _status(module.main, ["--no-such-flag"]) == 2
    assert "error:" in capsys.readouterr().err
    actions = getattr(module, "ACTIONS", {})
    assert set(parser.subcommands) == set(actions)  # one handler per subcommand
    for action in actions:
        assert _status(module.main, [action, "--help"]) == 0
        assert capsys.readouterr().out.startswith(f"usage: {parser.prog} {action}")


def test_overrides_anywhere_and_subcommands_through_the_public_api(capsys):
    parser = command_parser("prog", "A test command.", overrides=False)
    sub = parser.add_subparsers(dest="action", required=True)
    run = subcommand_parser(parser, sub, "run", "run it", "Run it.", config="required")
    run.add_argument("--fast", action="store_true")
    plain = subcommand_parser(parser, sub, "plain", "no overrides", "Plain.", overrides=False)
    plain.add_argument("word")
    assert run.takes_overrides and not plain.takes_overrides and not parser.takes_overrides
    name, child, args = parse_subcommand(parser, ["run", "A.b", "1", "--cfg", "c.yaml",
                                                  "--fast", "C.d", "2"])
    assert (name, child) == ("run", run)
    assert args.cfg == "c.yaml" and args.fast and args.opts == ["A.b", "1", "C.d", "2"]
    assert parse_subcommand(parser, ["plain", "x"])[2].word == "x"
    for argv, message in ((["run", "--cfg", "c", "lower", "1"], "neither a flag"),
                          (["run", "--cfg", "c", "A.b"], "has no value"),
                          (["walk"], "invalid choice: 'walk'"),
                          ([], "required: action")):
        with pytest.raises(SystemExit) as exc:
            parse_subcommand(parser, argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    # a parser that takes no overrides parses plainly: a stray word is an error
    with pytest.raises(SystemExit):
        parse_command(plain, ["x", "y"])


def _argparse_private_names() -> set[str]:
    """The private attributes and methods of argparse's parsers, subparsers,
    actions and groups (as this Python has them)."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="x")
    objects = (parser, sub, sub.add_parser("c"), parser.add_argument("--y"),
               parser.add_argument_group("g"), parser.add_mutually_exclusive_group())
    return {n for obj in objects for n in set(vars(obj)) | set(dir(type(obj)))
            if n.startswith("_") and not n.startswith("__")}


def test_no_private_argparse_attribute_in_the_package():
    private = _argparse_private_names()
    assert {"_actions", "_subparsers", "_option_string_actions"} <= private
    found = []
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(folder, f)
            tree = ast.parse(open(path, encoding="utf-8").read(), path)
            for node in ast.walk(tree):
                if not isinstance(node, ast.Attribute):
                    continue
                of_module = (isinstance(node.value, ast.Name) and node.value.id == "argparse"
                             and node.attr.startswith("_"))
                if node.attr in private or of_module:
                    found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}: .{node.attr}")
    assert not found, "argparse's private attributes used:\n" + "\n".join(found)


ROUND2_PATHS = {  # python -m <module> as round 2's docs wrote them -> the command now
    "mit_semseg.web": "python -m mit_semseg web",
    "mit_semseg.export": "python -m mit_semseg export",
    "mit_semseg.benchmark": "python -m mit_semseg benchmark",
    "mit_semseg.datatools": "python -m mit_semseg datatools",
    "mit_semseg.curves": "python -m mit_semseg curves",
    "mit_semseg.pretrained": "python -m mit_semseg pretrained",
    "mit_semseg.synthetic": "python -m mit_semseg synthetic",
    "mit_semseg.web.loadtest": "python tools/web_loadtest.py",
}


def _expected(old: str) -> str:
    return (f"error: python -m {old} is no longer a command; run: {ROUND2_PATHS[old]} "
            f"--cfg 'my config.yaml'\n")


@pytest.mark.parametrize("old", list(ROUND2_PATHS))
def test_round2_module_commands_name_the_new_command(old, monkeypatch, capsys):
    import runpy
    monkeypatch.setattr(sys, "argv", [old, "--cfg", "my config.yaml"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module(old, run_name="__main__", alter_sys=True)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err == _expected(old)


@pytest.mark.parametrize("old", ["mit_semseg.web", "mit_semseg.curves"])
def test_round2_paths_through_python_m(old, tmp_path):
    """The same through ``python -m``: a package's ``__main__`` and a module."""
    proc = subprocess.run([sys.executable, "-m", old, "--cfg", "my config.yaml"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", _expected(old))
