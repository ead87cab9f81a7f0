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


def _scan(line: str, quote: str, depth: int) -> tuple[str, int]:
    """
    The multi-line string still open (its triple quotes, or ``""``) and the
    depth of brackets and braces after *line*, which starts inside *quote*
    at *depth*. Comments and the text of strings are skipped.
    """
    i = 0
    while i < len(line):
        if quote:
            if line[i] == "\\" and quote[0] == '"':
                i += 2
            elif line.startswith(quote, i):
                i += len(quote)
                # Up to two quotes before the closing ones belong to the string.
                while len(quote) == 3 and line[i:i + 1] == quote[0]:
                    i += 1
                quote = ""
            else:
                i += 1
            continue
        char = line[i]
        if char == "#":
            break
        if line.startswith('"""', i) or line.startswith("'''", i):
            quote = line[i:i + 3]
            i += 3
            continue
        if char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        i += 1
    return (quote if len(quote) == 3 else ""), depth


_INLINE_KEY = re.compile(rf"\s*({_DOTTED})\s*=\s*")


def _inline_keys(value: str) -> list[list[str]]:
    """
    The keys of an inline table, ``{ a = 1, "b.c" = { d = 2 } }``, as parts:
    ``a``, ``b.c``, and ``b.c`` then ``d``; keys of tables inside arrays are
    left out.
    """
    text = value.strip()
    keys: list[list[str]] = []
    if not text.startswith("{"):
        return keys
    # Per open bracket: the path of an inline table, or None for an array.
    stack: list[list[str] | None] = []
    pending: list[str] | None = []
    quote = ""
    i = 0
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\" and quote[0] == '"':
                i += 2
                continue
            if text.startswith(quote, i):
                i += len(quote)
                quote = ""
                continue
            i += 1
            continue
        if char == "#":
            break
        i += 1
        if text.startswith(('"""', "'''"), i - 1):
            quote = text[i - 1:i + 2]
            i += 2
        elif char in "\"'":
            quote = char
        elif char == "[":
            stack.append(None)
        elif char == "{":
            # The table that the value of a key opens; None inside an array.
            stack.append(pending)
        elif char in "]}":
            if stack:
                stack.pop()
        if char not in "{,":
            if not char.isspace():
                pending = None
            continue
        pending = None
        top = stack[-1] if stack else None
        match = _INLINE_KEY.match(text, i)
        if top is not None and match is not None:
            pending = [*top, *_parts(match.group(1))]
            keys.append(pending)
            i = match.end()
    return keys


def key_positions(text: str) -> dict[str, int]:
    """
    The 1-based line of every key and table of *text*, by dotted path:
    ``"hostname"``, ``"plugins"``, ``"plugins.table"``,
    ``"plugins.table.map"``, ``"listener[2].auth"``. A key written with
    quotes is found without them; a dotted key also records the tables it
    names (``acme.dir = 1`` in ``[plugins]`` records ``plugins.acme``).
    """
    positions: dict[str, int] = {}
    counts: dict[str, int] = {}
    table: list[str] = []
    quote, depth = "", 0

    def record(parts: list[str], number: int) -> None:
        for end in range(1, len(parts) + 1):
            positions.setdefault(".".join(parts[:end]), number)

    for number, line in enumerate(text.splitlines(), 1):
        if quote or depth > 0:
            quote, depth = _scan(line, quote, depth)
            continue
        header = _HEADER.match(line)
        if header is not None:
            parts = _parts(header.group(2))
            resolved: list[str] = []
            for index, part in enumerate(parts):
                resolved.append(part)
                record(resolved, number)
                name = ".".join(resolved)
                if header.group(1) == "[[" and index == len(parts) - 1:
                    counts[name] = counts.get(name, 0) + 1
                if name in counts:
                    # A table of an array of tables: the array's latest.
                    resolved = [f"{name}[{counts[name]}]"]
            record(resolved, number)
            table = resolved
            continue
        assignment = _ASSIGNMENT.match(line)
        if assignment is None:
            continue
        key = [*table, *_parts(assignment.group(1))]
        record(key, number)
        value = assignment.group(2)
        for inner in _inline_keys(value):
            record([*key, *inner], number)
        quote, depth = _scan(value, "", 0)
        depth = max(depth, 0)
    return positions
