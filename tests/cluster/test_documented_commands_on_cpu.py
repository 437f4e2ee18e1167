"""Every command in the README's and docs' shell blocks parses, so the documents cannot drift from the CLI.

`studyhall ...` and `python -m cluster.*` lines go through the studyhall parser and their `key=value`
overrides through the preset loader; `ray ...` and `serve ...` lines through Ray's own click CLIs
(a `ray job submit` entrypoint is then checked as a command too); `make X` needs a target X.
Nothing is run: parsing alone checks the command names, options and override keys.
"""
import re
import shlex
import warnings
from pathlib import Path

import click
import pytest

from cluster.cli import _parser, _train_overrides
from studyhall.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# `python -m cluster ...` is the studyhall command (cluster/__main__.py)
CLI_MODULE = "cluster"
OTHER_TOOLS = {"pip"}  # installs named in the text, not our commands


def shell_commands(text: str) -> list[str]:
    """The commands of every ```bash block: continuation lines joined, comments and a trailing & dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # VAR=value before the command
                words = words[1:]
            if words and words[-1] == "&":
                words = words[:-1]
            if words:
                commands.append(words)
    return commands


def _documented():
    for doc in DOCUMENTS:
        for words in shell_commands(doc.read_text()):
            yield pytest.param(words, id=f"{doc.name}: {' '.join(words)[:80]}")


def _click_parse(group: click.Group, name: str, argv: list[str]) -> click.Context:
    """Parse argv down to its leaf subcommand the way the CLI would, without invoking anything."""
    ctx = group.make_context(name, list(argv))
    command = group
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # click 8's protected_args: the subcommand's name
        while isinstance(command, click.Group):
            rest = [*ctx.protected_args, *ctx.args]
            command = command.get_command(ctx, rest[0])
            assert command is not None, f"{name}: no subcommand {rest[0]!r}"
            ctx = command.make_context(rest[0], rest[1:], parent=ctx)
    return ctx


def check_studyhall(argv: list[str]) -> None:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit:
        raise AssertionError(f"studyhall {' '.join(argv)}: argparse refused it") from exit
    args.overrides = list(getattr(args, "overrides", None) or [])
    trains = args.command == "distill" or (args.command == "eval" and args.eval_target in (None, "student"))
    overrides = _train_overrides(args) if trains else args.overrides  # the flags distill and eval turn into overrides
    if hasattr(args, "preset"):
        load_config(args.preset, overrides)  # every override names a real key with a valid value


def check(words: list[str]) -> None:
    tool, rest = words[0], words[1:]
    if tool == "studyhall":
        check_studyhall(rest)
    elif tool == "python" and rest[:1] == ["-m"]:
        module = rest[1]
        if module == CLI_MODULE:
            check_studyhall(rest[2:])
        else:
            assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), f"no module {module}"
    elif tool == "ray":
        from ray.scripts.scripts import cli

        ctx = _click_parse(cli, "ray", rest)
        if ctx.info_name == "submit":
            check(list(ctx.params["entrypoint"]))
    elif tool == "serve":
        from ray.serve.scripts import cli

        _click_parse(cli, "serve", rest)
    elif tool == "make":
        targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
        named = [w for w in rest if "=" not in w]
        assert named and set(named) <= targets, f"make {' '.join(rest)}: Makefile targets are {sorted(targets)}"
    else:
        assert tool in OTHER_TOOLS, f"a documented command this test does not know how to check: {' '.join(words)}"


@pytest.mark.parametrize("words", list(_documented()))
def test_documented_command_parses(words):
    check(words)


def test_the_documents_show_commands_of_every_kind():
    tools = {words[0] for doc in DOCUMENTS for words in shell_commands(doc.read_text())}
    assert {"studyhall", "python", "ray", "serve", "make"} <= tools


@pytest.mark.parametrize("words", [
    ["studyhall", "distill", "--no-such-flag"],
    ["studyhall", "distill", "no_such_key=1"],
    ["studyhall", "generate", "--out", "x.jsonl", "tau0=-1"],
    ["python", "-m", "cluster", "distill", "--preset", "nope"],
    ["python", "-m", "cluster.distill", "--preset", "smol"],  # the old per-command modules are gone
    ["ray", "job", "submit", "--no-such-flag", "--", "python", "-m", "cluster", "distill"],
    ["ray", "job", "submit", "--", "python", "-m", "cluster", "distill", "lr=abc"],
    ["serve", "run", "--no-such-flag", "serve/gkt.yaml"],
    ["make", "no-such-target"],
    ["curl", "http://127.0.0.1:8000"],
], ids=lambda w: " ".join(w))
def test_a_wrong_command_is_caught(words):
    with pytest.raises((AssertionError, ConfigError, click.UsageError)):
        check(words)


def test_shell_commands_join_continuations_and_drop_comments_and_env():
    text = "```bash\nA=1 studyhall distill \\\n    --out x  # note\nray dashboard c.yaml &\n```\n```python\nprint(1)\n```\n"
    assert shell_commands(text) == [["studyhall", "distill", "--out", "x"], ["ray", "dashboard", "c.yaml"]]
