"""Condition variables: a CSV table of per-scan variables, their encoding, and the checks on them.

A training table has a ``file`` column (a scan's file name, or its path relative to the data
folder) and one column per variable. A column whose every filled cell is a number is continuous,
any other is categorical; ``conditions.types`` in the config overrides either. An empty cell is a
missing value, allowed only with ``conditions.allow_missing``.

Encoding (``ConditionSpec.encode``), the network's input for V variables::

    values [N, V] float32   categorical: the category's index in ``categories`` (sorted);
                            continuous: (x - mean) / std with the training set's mean and std
    known  [N, V] bool      False: the value is unknown, and the network uses the variable's
                            learned "unknown" embedding instead (never a stand-in number)

The spec (names, kinds, category lists, mean, std and training range) is saved in every checkpoint
(meta.json ``conditioning``) and in RUN_DIR/dataset.json, so sampling encodes requests exactly as
training did.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medddpm.errors import InputError

Kind = Literal["categorical", "continuous"]
Value = str | float | None
"""A raw condition value: a category (str), a number (float), or None (unknown)."""
FILE_COLUMN = "file"


@dataclass(frozen=True)
class Variable:
    """One condition variable as training saw it."""

    name: str
    kind: Kind
    categories: tuple[str, ...] = ()
    """Categorical: every category seen in training, sorted; index i is encoded as i."""
    mean: float = 0.0
    """Continuous: training mean (standardisation)."""
    std: float = 1.0
    """Continuous: training standard deviation (population; 1 when all values are equal)."""
    minimum: float = 0.0
    """Continuous: smallest training value; sampling beyond [minimum, maximum] needs forcing."""
    maximum: float = 0.0

    @property
    def size(self) -> int:
        """What the network needs: the number of categories, 0 for a continuous variable."""
        return len(self.categories) if self.kind == "categorical" else 0


@dataclass(frozen=True)
class ConditionSpec:
    variables: tuple[Variable, ...]

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variables]

    @property
    def sizes(self) -> list[int]:
        """Per variable: categories, or 0 for continuous (``medddpm.models.unet.build_unet``)."""
        return [v.size for v in self.variables]

    def to_dict(self) -> list[dict[str, Any]]:
        return [{**asdict(v), "categories": list(v.categories)} for v in self.variables]

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "meta.json") -> ConditionSpec:
        try:
            return cls(tuple(Variable(**{**d, "categories": tuple(d["categories"])}) for d in data))
        except (TypeError, KeyError) as e:
            raise InputError(f"unreadable condition variables ({e})", source) from None

    def encode(
        self,
        rows: Sequence[Mapping[str, Value]],
        *,
        allow_missing: bool,
        extrapolate: bool = True,
        where: Sequence[str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``rows`` of raw values (missing keys and None: unknown) -> (values, known), see the module
        docstring. ``where[i]`` names row i in errors (a file, a CSV row). Raises InputError for an
        unknown variable or category, a non-number for a continuous variable, a missing value
        without ``allow_missing``, and a number outside the training range without ``extrapolate``."""
        values = np.zeros((len(rows), len(self.variables)), dtype=np.float32)
        known = np.zeros((len(rows), len(self.variables)), dtype=bool)
        for i, row in enumerate(rows):
            at = where[i] if where is not None else f"row {i + 1}"
            extra = sorted(set(row) - set(self.names))
            if extra:
                raise InputError(
                    f"{at}: unknown condition variable '{extra[0]}' "
                    f"(the model knows: {', '.join(self.names)})"
                )
            for j, var in enumerate(self.variables):
                raw = row.get(var.name)
                if raw is None or (isinstance(raw, str) and not raw.strip()):
                    if not allow_missing:
                        raise InputError(f"{at}: no value for '{var.name}' (missing values are not allowed)")
                    continue
                values[i, j] = _encode_one(var, raw, at, extrapolate)
                known[i, j] = True
        return values, known

    def decode_row(self, row: Mapping[str, Value]) -> dict[str, Value]:
        """A raw row in the spec's own types (categories as str, numbers as float, None unknown)."""
        out: dict[str, Value] = {}
        for var in self.variables:
            raw = row.get(var.name)
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                out[var.name] = None
            elif var.kind == "categorical":
                out[var.name] = str(raw).strip()
            else:
                out[var.name] = float(raw)
        return out


def _encode_one(var: Variable, raw: Value, at: str, extrapolate: bool) -> float:
    if var.kind == "categorical":
        text = str(raw).strip()
        if text not in var.categories:
            raise InputError(
                f"{at}: unknown category '{text}' for '{var.name}' "
                f"(training saw: {', '.join(var.categories)})"
            )
        return float(var.categories.index(text))
    number = _number(raw)
    if number is None:
        raise InputError(f"{at}: '{var.name}' is continuous but got '{raw}', not a number")
    if not extrapolate and not var.minimum <= number <= var.maximum:
        raise InputError(
            f"{at}: {var.name}={number:g} is outside the training range [{var.minimum:g}, {var.maximum:g}]; "
            "pass --extrapolate to sample it anyway"
        )
    return (number - var.mean) / var.std


def _number(raw: Value) -> float | None:
    try:
        x = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# ---------------------------------------------------------------------------------------------
# Tables


def read_table(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV file's header and rows (cells stripped); InputError for an unreadable or empty table."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [{h.strip(): (v or "").strip() for h, v in r.items() if h is not None} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read the CSV table ({e})", path) from None
    if not header or not rows:
        raise InputError("the CSV table has no header or no rows", path)
    if len(set(header)) != len(header):
        raise InputError("the CSV table repeats a column name", path)
    for i, r in enumerate(rows, start=2):
        if None in r.values() or len(r) != len(header):
            raise InputError(f"row {i} has a different number of cells than the header", path)
    return header, rows


@dataclass
class TrainingConditions:
    """A training table matched to the scans: the spec and each scan's raw row, in scan order."""

    spec: ConditionSpec
    rows: list[dict[str, Value]]
    table: Path
    allow_missing: bool = False
    values: np.ndarray = field(init=False)
    known: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.values, self.known = self.spec.encode(self.rows, allow_missing=self.allow_missing)

    def record(self) -> dict[str, Any]:
        """dataset.json's ``conditions``: the table and the variables (per-file rows go with the files)."""
        return {
            "table": str(self.table),
            "allow_missing": self.allow_missing,
            "variables": self.spec.to_dict(),
        }


def _keys_for(scan: Path, data_dir: Path) -> list[str]:
    """The names a table row may use for ``scan``: its path relative to the data folder and its file
    name, each with and without the .nii / .nii.gz extension."""
    names = [scan.name]
    if data_dir.is_dir():
        names.insert(0, scan.relative_to(data_dir).as_posix())
    out = []
    for n in names:
        out.append(n)
        for ext in (".nii.gz", ".nii"):
            if n.endswith(ext):
                out.append(n[: -len(ext)])
    return out


def match_table(
    path: str | Path,
    scans: Sequence[Path],
    data_dir: str | Path,
    types: Mapping[str, Kind] | None = None,
    allow_missing: bool = False,
) -> TrainingConditions:
    """Match a training table's rows to ``scans`` (see the module docstring) and infer its variables.

    InputError, naming the table and the row or file, for: no ``file`` column, no variable column,
    a row whose file is no scan, two rows for one scan, a scan with no row, a ``types`` entry that
    names no column, a non-number in a continuous column, a missing value without ``allow_missing``.
    """
    path, data_dir = Path(path), Path(data_dir)
    header, rows = read_table(path)
    if FILE_COLUMN not in header:
        raise InputError(f"the CSV table needs a '{FILE_COLUMN}' column naming each scan", path)
    variables = [h for h in header if h != FILE_COLUMN]
    if not variables:
        raise InputError("the CSV table has no variable column besides 'file'", path)
    for name in types or {}:
        if name not in variables:
            raise InputError(f"conditions.types names '{name}', which is no column of the table", path)

    by_key: dict[str, int] = {}
    for i, scan in enumerate(scans):
        for key in _keys_for(Path(scan), data_dir):
            by_key.setdefault(key, i)
    row_of: dict[int, int] = {}
    for r, row in enumerate(rows):
        line = r + 2  # the header is line 1
        name = row[FILE_COLUMN].replace("\\", "/").removeprefix("./")
        if name not in by_key:
            raise InputError(f"row {line}: '{row[FILE_COLUMN]}' matches no scan in {data_dir}", path)
        scan_index = by_key[name]
        if scan_index in row_of:
            raise InputError(
                f"row {line}: '{row[FILE_COLUMN]}' is the same scan as row {row_of[scan_index] + 2}", path
            )
        row_of[scan_index] = r
    unmatched = [str(s) for i, s in enumerate(scans) if i not in row_of]
    if unmatched:
        more = f" (and {len(unmatched) - 1} more)" if len(unmatched) > 1 else ""
        raise InputError(f"no row for scan {unmatched[0]}{more}", path)

    ordered = [rows[row_of[i]] for i in range(len(scans))]
    lines = [f"row {row_of[i] + 2}" for i in range(len(scans))]
    spec = infer_spec(variables, ordered, lines, types or {}, allow_missing, path)
    raw = [spec.decode_row({k: v for k, v in row.items() if k != FILE_COLUMN}) for row in ordered]
    return TrainingConditions(spec, raw, path, allow_missing)


def infer_spec(
    names: Sequence[str],
    rows: Sequence[Mapping[str, str]],
    where: Sequence[str],
    types: Mapping[str, Kind],
    allow_missing: bool,
    source: Path,
) -> ConditionSpec:
    """Each variable's kind (``types``, else continuous when every filled cell is a number), its
    sorted categories, or its mean, std and range."""
    variables = []
    for name in names:
        filled = [(w, r[name]) for w, r in zip(where, rows, strict=True) if r[name] != ""]
        if len(filled) < len(rows) and not allow_missing:
            w = next(w for w, r in zip(where, rows, strict=True) if r[name] == "")
            raise InputError(
                f"{w}: no value for '{name}'; fill it in, or set conditions.allow_missing=true", source
            )
        if not filled:
            raise InputError(f"column '{name}' has no value at all", source)
        numbers = [_number(v) for _, v in filled]
        kind = types.get(name, "continuous" if all(x is not None for x in numbers) else "categorical")
        if kind == "categorical":
            variables.append(Variable(name, kind, categories=tuple(sorted({v for _, v in filled}))))
            continue
        bad = next(((w, v) for (w, v), x in zip(filled, numbers, strict=True) if x is None), None)
        if bad is not None:
            raise InputError(f"{bad[0]}: '{name}' is continuous but got '{bad[1]}', not a number", source)
        x = np.asarray(numbers, dtype=np.float64)
        std = float(x.std())
        variables.append(
            Variable(
                name,
                kind,
                mean=float(x.mean()),
                std=std if std > 0 else 1.0,
                minimum=float(x.min()),
                maximum=float(x.max()),
            )
        )
    return ConditionSpec(tuple(variables))


def parse_assignments(items: Sequence[str]) -> dict[str, str]:
    """``["sex=F", "age=70"]`` -> ``{"sex": "F", "age": "70"}``; InputError for a malformed item."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise InputError(f"--condition expects name=value, got '{item}'")
        if name.strip() in out:
            raise InputError(f"--condition sets '{name.strip()}' twice")
        out[name.strip()] = value.strip()
    return out
