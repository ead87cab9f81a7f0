"""
Where each key of a TOML document is: :mod:`tomllib` gives values and keeps no
positions, so errors found after parsing (an unknown key in a plugin's
section, a bad value) would have no line to name. This reads the document's
structure again, line by line, and records the line of every table header
and every key, by its dotted path.

It understands what config files use: ``[table]`` and ``[[array]]``
headers (an array's tables as ``name[1]``, ``name[2]``...), bare and quoted
keys, dotted keys, inline tables (their keys are on the line of the table),
and values that run over several lines (arrays, triple-quoted strings),
whose lines hold no keys. It never decides what is valid: :mod:`tomllib`
has done that first.
"""

from __future__ import annotations

import re

__all__ = ["key_positions"]

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_ASSIGNMENT = re.compile(rf"^\s*({_DOTTED})\s*=\s*(.*)$")
_PART = re.compile(rf"{_QUOTED}|{_BARE}")


def _parts(dotted: str) -> list[str]:
    parts = []
    for match in _PART.finditer(dotted):
        part = match.group(0)
        if part[0] in "\"'":
            part = part[1:-1]
        parts.append(part)
    return parts


def _open_brackets(value: str) -> int:
    """How many brackets and braces *value* leaves open, outside strings."""
    depth = 0
    quote = ""
    escaped = False
    for char in value:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "#":
            break
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
    return depth


def _inline_keys(value: str) -> list[str]:
    """The keys of an inline table, ``{ a = 1, "b.c" = 2 }``, at its top level."""
    keys: list[str] = []
    text = value.strip()
    if not text.startswith("{"):
        return keys
    for match in re.finditer(rf"(?:^\{{|,)\s*({_DOTTED})\s*=", text):
        keys.append(".".join(_parts(match.group(1))))
    return keys


def key_positions(text: str) -> dict[str, int]:
    """
    The 1-based line of every key and table of *text*, by dotted path:
    ``"hostname"``, ``"plugins"``, ``"plugins.table"``,
    ``"plugins.table.map"``, ``"listener[2].auth"``. A key written with
    quotes is found without them.
    """
    positions: dict[str, int] = {}
    counts: dict[str, int] = {}
    table: list[str] = []
    open_depth = 0
    in_string = ""
    for number, line in enumerate(text.splitlines(), 1):
        if in_string:
            if in_string in line:
                in_string = ""
            continue
        if open_depth > 0:
            open_depth += _open_brackets(line)
            continue
        header = _HEADER.match(line)
        if header is not None:
            parts = _parts(header.group(2))
            path = ".".join(parts)
            if header.group(1) == "[[":
                counts[path] = counts.get(path, 0) + 1
                positions.setdefault(path, number)
                path = f"{path}[{counts[path]}]"
            for end in range(1, len(parts)):
                positions.setdefault(".".join(parts[:end]), number)
            positions.setdefault(path, number)
            table = [path]
            continue
        assignment = _ASSIGNMENT.match(line)
        if assignment is None:
            continue
        key = ".".join([*table, *_parts(assignment.group(1))])
        positions.setdefault(key, number)
        value = assignment.group(2)
        for inner in _inline_keys(value):
            positions.setdefault(f"{key}.{inner}", number)
        for quotes in ('"""', "'''"):
            if value.lstrip().startswith(quotes) and value.count(quotes) == 1:
                in_string = quotes
        if not in_string:
            open_depth = max(_open_brackets(value), 0)
    return positions
