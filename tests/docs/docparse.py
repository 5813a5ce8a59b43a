"""Reading the machine-checkable parts of the docs: sections and tables of
``docs/contract.md``, fenced ``console`` blocks of ``README.md``.

Kept deliberately simple, because the docs are written to be parsed this way (see the top
of docs/contract.md): a section is everything after a ``### `` heading up to the next heading
of level 2 or 3; a table row is a line starting with ``|``; what is documented is whatever
stands in backticks in a row's first cell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "docs" / "contract.md"
README = REPO / "README.md"

_BACKTICKED = re.compile(r"`([^`]+)`")
_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def sections(text: str) -> dict[str, list[str]]:
    """``### Heading`` -> the lines of its section (until the next ``##`` or ``###``)."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("### "):
            current = out.setdefault(line[4:].strip(), [])
        elif line.startswith("## ") or line.startswith("# "):
            current = None
        elif current is not None:
            current.append(line)
    return out


def _cells(line: str) -> list[str]:
    # "\|" inside a cell is an escaped pipe, not a column border.
    parts = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [p.strip().replace("\\|", "|") for p in parts]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]

    def column(self, name: str) -> int:
        return self.header.index(name)


def tables(lines: list[str]) -> list[Table]:
    """Markdown tables in ``lines`` (header row, separator row, body rows)."""
    out: list[Table] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|?\s*$", lines[i + 1]):
            header = [c.lower() for c in _cells(lines[i])]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            out.append(Table(header, rows))
        else:
            i += 1
    return out


def first_cell_code(row: list[str]) -> list[str]:
    """What stands in backticks in a row's first cell."""
    return _BACKTICKED.findall(row[0])


def documented_options(lines: list[str]) -> set[str]:
    """Every ``-x``/``--flag`` in backticks in the first cell of the section's tables."""
    found: set[str] = set()
    for t in tables(lines):
        for row in t.rows:
            for code in first_cell_code(row):
                found.update(_OPTION.findall(code))
    return found


def documented_keys(lines: list[str]) -> dict[str, str]:
    """key -> its ``present`` cell, from the section's table with a ``present`` column."""
    for t in tables(lines):
        if "present" in t.header:
            col = t.column("present")
            return {first_cell_code(r)[0]: r[col].strip().lower() for r in t.rows if first_cell_code(r)}
    return {}


@dataclass
class ConsoleCommand:
    command: str  # the text after "$ "
    output: str  # the lines after it, up to the next "$ " line or the end of the block


def console_blocks(text: str) -> list[list[ConsoleCommand]]:
    """The README's fenced ```` ```console ```` blocks, each as its commands with their output."""
    blocks: list[list[ConsoleCommand]] = []
    in_block = False
    cmds: list[ConsoleCommand] = []
    for line in text.splitlines():
        if not in_block and line.strip() == "```console":
            in_block, cmds = True, []
        elif in_block and line.strip() == "```":
            in_block = False
            blocks.append(cmds)
        elif in_block:
            if line.startswith("$ "):
                cmds.append(ConsoleCommand(line[2:], ""))
            elif cmds:
                cmds[-1].output += line + "\n"
    return blocks
