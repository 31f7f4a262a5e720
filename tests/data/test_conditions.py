"""Condition tables: matching rows to scans, inferring and encoding variables, and every named error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medddpm.data.conditions import match_table, parse_assignments
from medddpm.errors import InputError


def _scans(root: Path, n: int = 4) -> list[Path]:
    paths = []
    for i in range(n):
        p = root / "scans" / ("sub" if i == 3 else "") / f"s{i}.nii.gz"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
        paths.append(p)
    return paths


def _table(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "table.csv"
    path.write_text(text)
    return path


TABLE = "file,sex,age\ns0.nii.gz,F,70\ns1,M,50\nsub/s3.nii.gz,F,61.5\n./s2,M,40\n"


def test_rows_match_scans_by_name_or_relative_path_and_kinds_are_inferred(tmp_path: Path):
    scans = _scans(tmp_path)
    found = match_table(_table(tmp_path, TABLE), scans, tmp_path / "scans")
    sex, age = found.spec.variables
    assert (sex.kind, sex.categories) == ("categorical", ("F", "M"))
    ages = np.array([70, 50, 40, 61.5])  # in scan order, not table order
    assert age.kind == "continuous"
    assert age.mean == pytest.approx(ages.mean()) and age.std == pytest.approx(ages.std())
    assert (age.minimum, age.maximum) == (40, 70)
    assert [r["age"] for r in found.rows] == list(ages)
    np.testing.assert_allclose(found.values[:, 1], (ages - ages.mean()) / ages.std(), rtol=1e-6)
    np.testing.assert_array_equal(found.values[:, 0], [0, 1, 1, 0])  # F=0, M=1
    assert found.known.all()


def test_config_overrides_the_inferred_kind(tmp_path: Path):
    scans = _scans(tmp_path)
    found = match_table(_table(tmp_path, TABLE), scans, tmp_path / "scans", {"age": "categorical"})
    assert found.spec.variables[1].categories == ("40", "50", "61.5", "70")


def test_missing_values_only_when_allowed_and_then_unknown(tmp_path: Path):
    scans = _scans(tmp_path)
    text = TABLE.replace("s1,M,50", "s1,M,")
    with pytest.raises(InputError, match=r"row 3: no value for 'age'.*allow_missing"):
        match_table(_table(tmp_path, text), scans, tmp_path / "scans")
    found = match_table(_table(tmp_path, text), scans, tmp_path / "scans", allow_missing=True)
    assert found.known[:, 1].tolist() == [True, False, True, True]
    assert found.rows[1]["age"] is None
    assert found.spec.variables[1].mean == pytest.approx(np.mean([70, 40, 61.5]))


@pytest.mark.parametrize(
    "text, message",
    [
        ("name,sex\ns0,F\n", "needs a 'file' column"),
        ("file\ns0\n", "no variable column"),
        (TABLE + "s9.nii.gz,F,30\n", r"row 6: 's9.nii.gz' matches no scan"),
        (TABLE + "s0,F,30\n", "row 6: 's0' is the same scan as row 2"),
        ("file,sex\ns0,F\ns1,M\ns2,M\n", r"no row for scan .*s3.nii.gz"),
        ("file,sex\n", "no header or no rows"),
    ],
)
def test_table_errors_name_the_row_or_file(tmp_path: Path, text: str, message: str):
    with pytest.raises(InputError, match=message) as e:
        match_table(_table(tmp_path, text), _scans(tmp_path), tmp_path / "scans")
    assert "table.csv" in str(e.value) and "\n" not in str(e.value)


def test_forced_continuous_column_with_text_is_an_error(tmp_path: Path):
    with pytest.raises(InputError, match="row 2: 'sex' is continuous but got 'F'"):
        match_table(_table(tmp_path, TABLE), _scans(tmp_path), tmp_path / "scans", {"sex": "continuous"})
    with pytest.raises(InputError, match="conditions.types names 'weight'"):
        match_table(_table(tmp_path, TABLE), _scans(tmp_path), tmp_path / "scans", {"weight": "continuous"})


def test_encoding_requests_checks_categories_range_and_names(tmp_path: Path):
    spec = match_table(_table(tmp_path, TABLE), _scans(tmp_path), tmp_path / "scans").spec
    values, known = spec.encode([{"sex": "M"}, {}], allow_missing=True, extrapolate=False)
    assert known.tolist() == [[True, False], [False, False]] and values[0, 0] == 1
    with pytest.raises(InputError, match="unknown category 'X' for 'sex' \\(training saw: F, M\\)"):
        spec.encode([{"sex": "X"}], allow_missing=True)
    with pytest.raises(InputError, match=r"age=80 is outside the training range \[40, 70\]"):
        spec.encode([{"age": "80"}], allow_missing=True, extrapolate=False)
    assert spec.encode([{"age": "80"}], allow_missing=True, extrapolate=True)[1][0, 1]
    with pytest.raises(InputError, match="unknown condition variable 'weight'"):
        spec.encode([{"weight": "3"}], allow_missing=True)
    with pytest.raises(InputError, match="no value for 'age'"):
        spec.encode([{"sex": "F"}], allow_missing=False)


def test_parse_assignments():
    assert parse_assignments(["sex=F", " age = 70 "]) == {"sex": "F", "age": "70"}
    for bad in (["sex"], ["=F"], ["sex="], ["sex=F", "sex=M"]):
        with pytest.raises(InputError):
            parse_assignments(bad)
