"""The labels table of a zoo import (``labels.csv``): one row per network, read and checked
before anything is converted, so that a typo costs one clear line and not a half-made zoo.

Format: a CSV file (comma, semicolon or tab separated; UTF-8, an Excel byte-order mark is fine)
with a header row. Columns:

``file``         required: the checkpoint (or graph file) of the row, relative to the source
                 directory (absolute paths work too). Each file may appear once.
``arch``         optional: the architecture of this row, ``file.py:Callable`` or
                 ``package.module:callable`` as for ``--arch`` (a ``.py`` path is looked up in the
                 source directory first, then in the current one); blank: ``--arch``.
``arch_kwargs``  optional: the callable's keyword arguments as a JSON object; blank:
                 ``--arch-kwargs``.
``input_shape``  optional: the example input's shape for tracing, e.g. ``1,3,32,32``; blank:
                 ``--input-shape``.
anything else    labels: any number of target columns (numbers or categories) and, named with
                 ``--group-column`` / ``--split-column``, the group (checkpoints of one training
                 run, which always share a split) and the split (``train``, ``val``, ``test``).

Values are kept typed: an integer, a number, or text; an empty cell (or ``nan``/``NA``) is
missing. Whether a column is numeric or categorical is decided by the task that uses it
(:mod:`paramgraph.tasks.objectives`), which names the line of a missing or non-numeric value.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ZooError

SOURCE_COLUMNS = ("file", "arch", "arch_kwargs", "input_shape")
SPLITS = ("train", "val", "test")
MISSING = ("", "nan", "na", "n/a", "none", "null")
_INT = re.compile(r"[+-]?\d+")


@dataclass
class LabelRow:
    """One row of the table: its line in the file, its checkpoint and its typed values."""

    line: int
    file: str
    values: dict = field(default_factory=dict)  # every column but 'file', typed


@dataclass
class LabelTable:
    """A checked labels table: its path, its columns (in file order) and its rows."""

    path: Path
    columns: list[str]
    rows: list[LabelRow]

    def where(self, row: LabelRow, column: str) -> str:
        """How an error names a cell: ``labels.csv line 7, column 'split'``."""
        return f"{self.path} line {row.line}, column '{column}'"


def parse_value(text: str):
    """A cell as an ``int``, a ``float`` or the stripped text; ``None`` when it is empty or
    says it is missing (``nan``, ``NA``, ...)."""
    text = text.strip()
    if text.lower() in MISSING:
        return None
    if _INT.fullmatch(text):
        return int(text)
    try:
        x = float(text)
    except ValueError:
        return text
    return x if math.isfinite(x) else text  # 'inf' stays text: the task names it


def read_labels(path: str | os.PathLike, src: str | os.PathLike) -> LabelTable:
    """Read and check the labels table ``path`` of the checkpoints in ``src``.

    Raises :class:`ZooError` with one line naming the file, line and column for: a missing or
    unreadable file, no header or no ``file`` column, an empty table, a row whose ``file`` is
    empty, repeated or does not exist in ``src``, or a row with more cells than the header.
    """
    path, src = Path(path), Path(src)
    if not path.is_file():
        raise ZooError(f"labels file '{path}' does not exist (give one with --labels: a CSV "
                       "with a 'file' column and one column per label)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ZooError(f"labels file '{path}' cannot be read as UTF-8 text ({err})") from None
    reader = csv.reader(text.splitlines(), dialect=_dialect(text))
    header = [h.strip() for h in next(reader, [])]
    _check_header(path, header)
    rows = [_row(path, n, header, cells) for n, cells in enumerate(reader, 2) if any(
        c.strip() for c in cells)]
    if not rows:
        raise ZooError(f"labels file '{path}' has a header but no rows")
    table = LabelTable(path, [h for h in header if h != "file"], rows)
    _check_files(table, src)
    return table


def _dialect(text: str):
    """Excel's CSV (double quotes, doubled inside a value) with the header's delimiter: comma
    unless it uses semicolons or tabs (spreadsheets in some locales)."""
    head = text.split("\n", 1)[0]
    try:
        delimiter = csv.Sniffer().sniff(head, delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","

    class Dialect(csv.excel):
        pass

    Dialect.delimiter = delimiter
    return Dialect


def _check_header(path: Path, header: list[str]) -> None:
    if not any(header):
        raise ZooError(f"labels file '{path}' is empty (it needs a header row with a 'file' "
                       "column)")
    if "file" not in header:
        raise ZooError(f"labels file '{path}' has no 'file' column (its columns: "
                       f"{', '.join(header)}); name the checkpoint of each row in a 'file' column")
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated or "" in header:
        what = f"repeats column '{repeated[0]}'" if repeated else "has a column without a name"
        raise ZooError(f"labels file '{path}' {what} in its header")


def _row(path: Path, line: int, header: list[str], cells: list[str]) -> LabelRow:
    if len(cells) > len(header):
        raise ZooError(f"{path} line {line} has {len(cells)} cells but the header has "
                       f"{len(header)} columns (a comma inside a value needs quotes)")
    cells = cells + [""] * (len(header) - len(cells))
    values = {h: parse_value(c) for h, c in zip(header, cells)}
    file = cells[header.index("file")].strip()
    if not file:
        raise ZooError(f"{path} line {line}, column 'file': empty; every row names its "
                       "checkpoint")
    del values["file"]
    return LabelRow(line, file, values)


def _check_files(table: LabelTable, src: Path) -> None:
    seen: dict[str, int] = {}
    missing = []
    for row in table.rows:
        if row.file in seen:
            raise ZooError(f"{table.where(row, 'file')}: '{row.file}' is already on line "
                           f"{seen[row.file]}; each checkpoint may appear once")
        seen[row.file] = row.line
        if not (src / row.file).is_file():
            missing.append(row)
    if missing:
        row = missing[0]
        more = f" (and {len(missing) - 1} more rows)" if len(missing) > 1 else ""
        raise ZooError(f"{table.where(row, 'file')}: '{row.file}' does not exist in '{src}'"
                       f"{more}; file paths are relative to the source directory")


def groups_and_splits(table: LabelTable, group_column: str | None,
                      split_column: str | None) -> tuple[list, list[str] | None]:
    """Each row's group (its ``group_column`` value; without one, each row is its own group)
    and split (its ``split_column`` value; ``None`` without one).

    Raises :class:`ZooError` naming the line and column of a missing group or split, a split
    that is not train/val/test, or a group whose rows have different splits; and when the
    split column leaves train, val or test empty.
    """
    for name, flag in ((group_column, "--group-column"), (split_column, "--split-column")):
        if name is not None and name not in table.columns:
            raise ZooError(f"{flag} '{name}': labels file '{table.path}' has no such column "
                           f"(its columns: {', '.join(table.columns)})")
    groups = [row.line if group_column is None else row.values[group_column]
              for row in table.rows]
    for row, g in zip(table.rows, groups):
        if g is None:
            raise ZooError(f"{table.where(row, group_column)}: empty; every row needs a group")
    if split_column is None:
        return groups, None
    splits, first = [], {}
    for row, g in zip(table.rows, groups):
        s = row.values[split_column]
        s = s.lower() if isinstance(s, str) else s
        if s not in SPLITS:
            raise ZooError(f"{table.where(row, split_column)}: {s!r} is not train, val or test")
        if first.setdefault(g, (s, row.line))[0] != s:
            raise ZooError(f"{table.where(row, split_column)}: '{s}', but line {first[g][1]} of "
                           f"the same group {g!r} says '{first[g][0]}'; the checkpoints of one "
                           "group must share a split")
        splits.append(s)
    empty = [s for s in SPLITS if s not in splits]
    if empty:
        raise ZooError(f"column '{split_column}' of '{table.path}' puts no row in "
                       f"{' or '.join(empty)}; training needs train, val and test networks")
    return groups, splits


def source_options(table: LabelTable, row: LabelRow, defaults: dict) -> dict:
    """The architecture options of one row: its ``arch``, ``arch_kwargs`` and ``input_shape``
    cells where filled in, else ``defaults`` (the command line's). Raises :class:`ZooError`
    naming the cell for kwargs that are not a JSON object or a shape that is not a list of
    positive integers."""
    out = dict(defaults)
    arch = row.values.get("arch")
    if arch is not None:
        out["arch"] = str(arch)
    kwargs = row.values.get("arch_kwargs")
    if kwargs is not None:
        try:
            value = json.loads(str(kwargs))
        except json.JSONDecodeError as err:
            raise ZooError(f"{table.where(row, 'arch_kwargs')}: not valid JSON ({err.msg})") \
                from None
        if not isinstance(value, dict):
            raise ZooError(f"{table.where(row, 'arch_kwargs')}: must be a JSON object, e.g. "
                           "{\"width\": 16}")
        out["arch_kwargs"] = value
    shape = row.values.get("input_shape")
    if shape is not None:
        out["input_shape"] = parse_shape(str(shape), table.where(row, "input_shape"))
    return out


def parse_shape(text: str, where: str) -> tuple[int, ...]:
    """``"1,3,32,32"`` (or ``1x3x32x32``, or ``[1, 3, 32, 32]``) as a tuple; :class:`ZooError`
    naming ``where`` otherwise (the grammar is :func:`paramgraph.inputs.parse_shape`'s)."""
    from paramgraph.errors import ParamGraphError
    from paramgraph.inputs import parse_shape as parse

    try:
        return parse(text)
    except ParamGraphError:
        raise ZooError(f"{where}: '{text}' is not a shape; expected positive integers such as "
                       "1,3,32,32") from None
