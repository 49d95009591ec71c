"""Every command and group of the ``feedrank`` CLI has a --help with an example."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from feedrank import __version__
from feedrank.cli.main import cli


def _walk(cmd: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                out += _walk(sub, path + (name,))
    return out


COMMANDS = _walk(cli)


def test_the_walk_finds_the_known_commands():
    paths = {" ".join(p) for p, _ in COMMANDS}
    assert {"", "data", "train", "eval", "serve", "demo"} <= paths
    assert any(p.startswith("data ") for p in paths)  # data has subcommands


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "feedrank")
def test_help_exits_zero_and_shows_an_example(path: tuple[str, ...]):
    r = CliRunner().invoke(cli, [*path, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output
    assert "example" in r.output.lower(), f"`feedrank {' '.join(path)} --help` has no example:\n{r.output}"


@pytest.mark.parametrize("path", [p for p, c in COMMANDS if isinstance(c, click.Group)], ids=lambda p: " ".join(p) or "feedrank")
def test_short_help_flag_works_for_groups(path: tuple[str, ...]):
    r = CliRunner().invoke(cli, [*path, "-h"])
    assert r.exit_code == 0, r.output


def test_version():
    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0, r.output
    assert __version__ in r.output and "feedrank" in r.output
