"""The command reference of kamengd/docs/cli.md, written from the commands themselves.

`scripts/docs` puts it below the hand-written part of that file; a test fails
when the file and the commands disagree, so the reference never describes a
command or an option that is not there (nor misses one that is).
"""
from __future__ import annotations

import sys

import click

from .group import cli

MARK = "<!-- Below: written by scripts/docs from the commands' own help. Do not edit by hand. -->"


def walk(group: click.Group, ctx: click.Context, path: tuple[str, ...] = ()):
    """(path, command, its context) for every command under `group`, in the order of `--help`."""
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(command, info_name=name, parent=ctx)
        yield path + (name,), command, sub
        if isinstance(command, click.Group):
            yield from walk(command, sub, path + (name,))


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _option_row(param: click.Parameter, ctx: click.Context) -> str | None:
    if not isinstance(param, click.Option) or param.hidden or "--help" in param.opts:
        return None
    record = param.get_help_record(ctx)
    if record is None:
        return None
    names, help_text = record
    return f"| `{_cell(names)}` | {_cell(help_text) or ' '} |"


def render() -> str:
    root = click.Context(cli, info_name="kamengd")
    lines = [MARK, "", "## Every command", "", "Global options, given before the command:", "",
             "| option | meaning |", "|---|---|",
             *[row for p in cli.get_params(root) if (row := _option_row(p, root))], ""]
    for path, command, ctx in walk(cli, root):
        title = "kamengd " + " ".join(path)
        lines.append(f"### `{title}`")
        lines.append("")
        usage = " ".join(command.collect_usage_pieces(ctx))
        lines.append(f"Usage: `{title} {usage}`".rstrip("` ") + "`")
        lines.append("")
        help_text = (command.help or "").split("\f")[0].strip()
        if help_text:
            lines.append(click.unstyle(" ".join(help_text.split())))
            lines.append("")
        rows = [row for p in command.get_params(ctx) if (row := _option_row(p, ctx))]
        if isinstance(command, click.Group):
            subs = [n for n in command.list_commands(ctx) if not command.get_command(ctx, n).hidden]
            lines.append("Commands: " + ", ".join(f"`{n}`" for n in subs) + ".")
            lines.append("")
        if rows:
            lines += ["| option | meaning |", "|---|---|", *rows, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def splice(document: str) -> str:
    """`document` with everything after MARK replaced by the current reference."""
    head, found, _ = document.partition(MARK)
    if not found:
        raise ValueError(f"the document has no line {MARK!r}")
    return head + render()


if __name__ == "__main__":   # scripts/docs
    path = sys.argv[1]
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    new = splice(text)
    if new != text:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(new)
        print(f"updated {path}")
