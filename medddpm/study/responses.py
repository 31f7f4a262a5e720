"""Readers' answers, from wherever they come: the server's logs and the pages' exported files.

- STUDY_DIR/responses/READER.jsonl (``study serve``): one JSON record per line, appended as each
  answer arrives, ``{"received": ..., "answer": {...}}``. A crash can leave a torn last line (no
  newline): it is skipped, every complete line before it counts.
- answers-READER.json (the page's "Export answers"): ``{"study", "reader", "task", "answers": [...]}``.

A reader may change an answer: the one with the latest ``time`` (the browser's clock when it was
saved) counts, so a log and an export of the same session agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medddpm.errors import InputError

RESPONSES = "responses"
"""STUDY_DIR/responses/: what ``study serve`` appends to."""


def log_path(study_dir: Path, reader: str) -> Path:
    return Path(study_dir) / RESPONSES / f"{reader}.jsonl"


def read_log(path: Path) -> list[dict[str, Any]]:
    """The answers of one server log, in the order received; a torn last line is skipped."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # written only in part when the server stopped
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line)["answer"])
        except (ValueError, KeyError, TypeError):
            raise InputError(f"line {number} is not an answer record", path) from None
    return out


def read_export(path: Path, study: str) -> tuple[str, list[dict[str, Any]]]:
    """(reader, answers) of an exported file; InputError for a file of another study or another shape."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read the answers ({e})", path) from None
    if not isinstance(data, dict) or not isinstance(data.get("answers"), list) or "reader" not in data:
        raise InputError("not an answers file exported by a reader page (no 'reader' and 'answers')", path)
    if data.get("study") != study:
        raise InputError("these answers belong to another study (its study id differs from key.json's)", path)
    return str(data["reader"]), data["answers"]


def latest(answers: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """case id -> the answer saved last (by its ``time``; the later one in the input on a tie)."""
    out: dict[str, dict[str, Any]] = {}
    for a in answers:
        if not isinstance(a, dict) or "case" not in a:
            continue
        case = str(a["case"])
        if case not in out or str(a.get("time", "")) >= str(out[case].get("time", "")):
            out[case] = a
    return out


def collect(study_dir: Path, exports: Iterable[Path], key: dict[str, Any]) -> dict[str, dict[str, dict]]:
    """reader -> case -> answer, from STUDY_DIR/responses/*.jsonl and the ``exports`` files together.

    Answers of readers or cases that key.json does not know are an InputError naming the file.
    """
    gathered: dict[str, list[dict[str, Any]]] = {}
    sources: list[tuple[Path, str, list[dict[str, Any]]]] = []
    folder = Path(study_dir) / RESPONSES
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        sources.append((path, path.stem, read_log(path)))
    for path in exports:
        reader, answers = read_export(Path(path), key["study"])
        sources.append((Path(path), reader, answers))
    for path, reader, answers in sources:
        if reader not in key["readers"]:
            raise InputError(f"answers of an unknown reader {reader!r}", path)
        unknown = [
            a.get("case") for a in answers if isinstance(a, dict) and a.get("case") not in key["cases"]
        ]
        if unknown:
            raise InputError(
                f"answers for {len(unknown)} case(s) not in this study, e.g. {unknown[0]!r}", path
            )
        gathered.setdefault(reader, []).extend(answers)
    return {reader: latest(answers) for reader, answers in sorted(gathered.items())}
