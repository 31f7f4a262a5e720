"""The output-folder policy: what is refused, what --overwrite deletes (only what medddpm wrote),
atomic publishing, and that the four commands follow the same rules and declare what they write."""

from __future__ import annotations

import errno
import os
import pathlib
from pathlib import Path

import numpy as np
import pytest

from medddpm import output_folder
from medddpm.errors import InputError
from medddpm.output_folder import (
    DEMO_FOLDER,
    REPORT_FOLDER,
    RUN_FOLDER,
    SAMPLE_FOLDER,
    Outputs,
    atomic_folder,
    atomic_path,
    check_output,
    prepare_output,
    publish_folder,
    temporary_folder,
)
from tests.conftest import blob_volume, write_nifti

TOY = Outputs(
    noun="toy folder",
    remedy="pass --overwrite, or choose another --output",
    files=(r"out_\d+\.txt", r"log\.csv"),
    folders=("parts",),
    temporaries=(r"\.out_\d+-[a-z0-9_]+\.txt",),
)


def tree(folder: Path) -> list[str]:
    """Every path below ``folder``, relative, sorted (folders end in /)."""
    return sorted(str(p.relative_to(folder)) + ("/" if p.is_dir() else "") for p in folder.rglob("*"))


# ---------------------------------------------------------------------------------------------
# Checks


def test_a_file_in_the_way_is_refused_naming_it(tmp_path: Path):
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(InputError, match="exists and is not a folder") as e:
        check_output(tmp_path / "file", TOY, overwrite=True)
    assert e.value.path == tmp_path / "file" and "is a file" in str(e.value)
    with pytest.raises(InputError, match="is a file, so the output folder cannot be created inside it") as e:
        check_output(tmp_path / "file" / "a" / "b", TOY, overwrite=False)
    assert e.value.path == tmp_path / "file"
    assert (tmp_path / "file").read_text() == "keep me"


def test_a_folder_without_write_permission_is_refused_naming_it(tmp_path: Path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    for target in (locked, locked / "new" / "deeper"):
        with pytest.raises(InputError, match="no permission to write here") as e:
            check_output(target, TOY, overwrite=False)
        assert e.value.path == locked
    check_output(tmp_path / "free", TOY, overwrite=False)


def test_a_parent_that_cannot_be_searched_is_an_input_error(tmp_path: Path, monkeypatch):
    closed = tmp_path / "closed"
    real_exists = pathlib.Path.exists

    def exists(self, *args, **kwargs):  # what stat says below a folder without search permission
        if str(self).startswith(f"{closed}/"):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "exists", exists)
    with pytest.raises(InputError) as e:
        check_output(closed / "run", TOY, overwrite=False)
    assert str(e.value) == f"{closed / 'run'}: cannot reach the output folder (Permission denied)"


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_an_output_overlapping_an_input_is_refused(where: str, tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    target = {"same": data, "inside": data / "out", "around": tmp_path}[where]
    with pytest.raises(InputError, match=f"the toy folder overlaps the input folder {data}"):
        check_output(target, TOY, overwrite=True, inputs=[data])
    check_output(tmp_path / "beside", TOY, overwrite=True, inputs=[data])


def test_a_non_empty_folder_needs_resume_or_overwrite(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    check_output(out, TOY, overwrite=False)  # empty: fine
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError) as e:
        check_output(out, TOY, overwrite=False)
    assert str(e.value) == f"{out}: output folder is not empty; pass --overwrite, or choose another --output"
    check_output(out, TOY, overwrite=True)
    check_output(out, TOY, overwrite=False, resume=True)
    assert tree(out) == ["notes.txt"]  # checks write nothing


def test_a_folder_replaced_whole_must_hold_only_what_medddpm_wrote(tmp_path: Path):
    whole = Outputs(noun="toy report", remedy="pass --overwrite", files=(r".+\.png", r"a\.json"), whole=True)
    out = tmp_path / "report"
    out.mkdir()
    (out / "a.json").write_text("{}")
    (out / "b.png").write_bytes(b"png")
    check_output(out, whole, overwrite=True)
    (out / "notes.txt").write_text("mine")
    (out / "figures.png").mkdir()  # a folder is never a report file, whatever its name
    with pytest.raises(InputError, match="also holds 'figures.png' and 1 more, which medddpm did not write"):
        check_output(out, whole, overwrite=True)


# ---------------------------------------------------------------------------------------------
# Preparing: --overwrite deletes only what the command writes


def test_overwrite_deletes_only_what_the_command_writes(tmp_path: Path):
    out = tmp_path / "out"
    (out / "parts" / "deep").mkdir(parents=True)
    (out / "parts" / "deep" / "x.bin").write_bytes(b"ours")
    for name in ("out_0001.txt", "log.csv", "notes.txt", "out_1.txt.bak", "parts.txt"):
        (out / name).write_text("x")
    (out / "log.csv.d").mkdir()
    (out / "out_0002.txt").mkdir()  # named like our file, but a folder: not ours
    (out / "out_0002.txt" / "mine").write_text("mine")
    users = tmp_path / "users"
    users.mkdir()
    (users / "precious").write_text("mine")
    (out / "linked").symlink_to(users)
    prepare_output(out, TOY, clear=False)
    assert "out_0001.txt" in tree(out)  # without --overwrite nothing of ours goes either
    prepare_output(out, TOY, clear=True)
    assert tree(out) == [
        "linked/",
        "log.csv.d/",
        "notes.txt",
        "out_0002.txt/",
        "out_0002.txt/mine",
        "out_1.txt.bak",
        "parts.txt",
    ]
    assert (users / "precious").read_text() == "mine"


def test_a_link_named_like_our_folder_is_removed_not_followed(tmp_path: Path):
    users = tmp_path / "users"
    users.mkdir()
    (users / "precious").write_text("mine")
    out = tmp_path / "out"
    out.mkdir()
    (out / "parts").symlink_to(users)
    prepare_output(out, TOY, clear=True)
    assert not (out / "parts").exists() and (users / "precious").read_text() == "mine"


def test_leftover_temporaries_are_removed_every_time(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".out_0003-k2j4h8x1.txt").write_text("half-written")
    (out / ".out_0003-notes").write_text("mine: not a name atomic_path makes")
    (out / ".out_0004-abc.txt").mkdir()  # a folder is never one of our temporaries
    prepare_output(out, TOY, clear=False)
    assert tree(out) == [".out_0003-notes", ".out_0004-abc.txt/"]


def test_a_folder_that_cannot_be_created_is_an_input_error(tmp_path: Path, monkeypatch):
    def mkdir(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    with pytest.raises(InputError) as e:
        prepare_output(tmp_path / "ro", TOY, clear=False)
    assert str(e.value) == f"{tmp_path / 'ro'}: cannot write the toy folder (Read-only file system)"


# ---------------------------------------------------------------------------------------------
# Publishing


def test_atomic_path_names_its_temporary_as_the_tables_expect(tmp_path: Path):
    for table, name in [(RUN_FOLDER, "config.yaml"), (SAMPLE_FOLDER, "sample_0012.nii.gz")]:
        with atomic_path(tmp_path / name) as tmp:
            tmp.write_text("new")
            assert table.is_temporary(tmp) and not table.owns(tmp)
        assert (tmp_path / name).read_text() == "new"
        assert table.owns(tmp_path / name)


def test_atomic_path_keeps_the_earlier_file_when_writing_fails(tmp_path: Path):
    target = tmp_path / "manifest.json"
    target.write_text("earlier")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert tree(tmp_path) == ["manifest.json"] and target.read_text() == "earlier"


def test_publish_folder_fsyncs_everything_then_replaces_the_earlier_folder(tmp_path: Path, monkeypatch):
    final = tmp_path / "report"
    final.mkdir()
    (final / "old.png").write_bytes(b"old")
    (tmp_path / ".report-tmp-crashed1").mkdir()  # an interrupted earlier evaluation
    (tmp_path / ".report-old-crashed2").mkdir()
    (tmp_path / ".report-tmp-notes.txt").write_text("mine: not a name mkdtemp makes")
    tmp = temporary_folder(final)
    assert tmp.parent == tmp_path and tmp.name.startswith(".report-tmp-")
    umask = os.umask(0)
    os.umask(umask)
    assert tmp.stat().st_mode & 0o777 == 0o777 & ~umask  # an ordinary folder, not mkdtemp's private one
    (tmp / "figures").mkdir()
    (tmp / "figures" / "a.png").write_bytes(b"png")
    (tmp / "metrics.json").write_text("{}")

    events = []
    real_fsync, real_replace = output_folder.fsync, os.replace
    monkeypatch.setattr(output_folder, "fsync", lambda p: events.append(("fsync", Path(p))) or real_fsync(p))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", Path(b))) or real_replace(a, b))
    publish_folder(tmp, final)

    synced = [p for kind, p in events[: events.index(next(e for e in events if e[0] == "replace"))]]
    assert {tmp / "figures" / "a.png", tmp / "metrics.json", tmp / "figures", tmp} <= set(synced)
    assert tree(final) == ["figures/", "figures/a.png", "metrics.json"]
    assert tree(tmp_path) == [
        ".report-tmp-notes.txt",
        "report/",
        "report/figures/",
        "report/figures/a.png",
        "report/metrics.json",
    ]


def test_publish_folder_into_a_new_place(tmp_path: Path):
    final = tmp_path / "deeper" / "report"
    tmp = temporary_folder(final)
    (tmp / "metrics.json").write_text("{}")
    publish_folder(tmp, final)
    assert tree(tmp_path / "deeper") == ["report/", "report/metrics.json"]


def test_atomic_folder_publishes_on_success_and_leaves_the_old_folder_on_failure(tmp_path: Path):
    final = tmp_path / "report"
    with atomic_folder(final) as tmp:
        (tmp / "metrics.json").write_text('{"fid": 1}')
        assert not final.exists()  # nothing is visible until the block has finished
    assert tree(tmp_path) == ["report/", "report/metrics.json"]
    with pytest.raises(RuntimeError), atomic_folder(final) as tmp:
        (tmp / "metrics.json").write_text('{"fid": 2}')
        raise RuntimeError("the report failed half-way")
    assert tree(tmp_path) == ["report/", "report/metrics.json"]  # no temporary left
    assert (final / "metrics.json").read_text() == '{"fid": 1}'


# ---------------------------------------------------------------------------------------------
# The four commands: one policy, and the declarations match what they write


def _checks():
    """Each command's check of its output folder, called as the command calls it."""
    from medddpm.demo import check_demo_folder
    from medddpm.inference.sample_to_folder import check_output_folder
    from medddpm.training.loop import check_run_dir

    return {
        "train": lambda out: check_run_dir(out, resume=False, overwrite=False),
        "sample": lambda out: check_output_folder(out, {}, overwrite=False),
        "evaluate": lambda out: check_output(out, REPORT_FOLDER, overwrite=False, inputs=[]),
        "demo": lambda out: check_demo_folder(out, overwrite=False),
    }


@pytest.mark.parametrize("command", ["train", "sample", "evaluate", "demo"])
def test_every_command_refuses_the_same_folders(command: str, tmp_path: Path, monkeypatch):
    check = _checks()[command]
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="exists and is not a folder"):
        check(tmp_path / "file")
    with pytest.raises(InputError, match="is a file, so the output folder cannot be created inside it"):
        check(tmp_path / "file" / "out")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="output folder is not empty.*--overwrite.*choose another --output"):
        check(taken)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    with pytest.raises(InputError, match="no permission to write here"):
        check(locked / "out")


def _prepares():
    from medddpm.inference.sample_to_folder import _prepare_folder
    from medddpm.training.loop import prepare_run_dir

    return {
        "train": (lambda out: prepare_run_dir(out, resume=False, overwrite=True), "run folder"),
        "sample": (lambda out: _prepare_folder(out, "overwrite"), "output folder"),
        "demo": (lambda out: prepare_output(out, DEMO_FOLDER, clear=True), "demo folder"),
    }


@pytest.mark.parametrize("command", ["train", "sample", "demo"])
def test_every_command_turns_a_failing_mkdir_into_one_line(command: str, tmp_path: Path, monkeypatch):
    prepare, noun = _prepares()[command]

    def mkdir(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    with pytest.raises(InputError, match=rf"cannot write the {noun} \(Read-only file system\)"):
        prepare(tmp_path / "out")


def test_a_run_folder_holds_only_what_run_folder_declares(tiny_run: Path):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"checkpoints", "config.yaml", "dataset.json", "metrics.csv"} <= names
    assert all(RUN_FOLDER.owns(p) for p in tiny_run.iterdir())


def test_samples_and_a_report_hold_only_what_their_tables_declare(tiny_run: Path, tmp_path: Path):
    from medddpm.config import SampleConfig
    from medddpm.evaluation.evaluate import evaluate
    from medddpm.evaluation.measure import eval_config
    from medddpm.inference.sample_to_folder import sample_to_folder
    from medddpm.runtime import torch_threads

    rng = np.random.default_rng(5)
    for i in range(2):
        write_nifti(tmp_path / "real" / f"r{i}.nii.gz", blob_volume(rng, (16, 16, 16)))
    with torch_threads(1):
        settings = SampleConfig(steps=2, batch_size=2)
        samples = sample_to_folder(tiny_run, tmp_path / "samples", 2, settings, fmt="nii.gz")
        cfg = eval_config(flags={"eval.max_pairs": 1})
        evaluate(tmp_path / "real", samples.out_dir, tmp_path / "report", cfg, save_features=True)
    written = {"samples": list(samples.out_dir.iterdir()), "report": list((tmp_path / "report").iterdir())}
    names = {"sample_0000.nii.gz", "sample_0001.nii.gz", "manifest.json", "preview.png"}
    assert {p.name for p in written["samples"]} == names
    assert all(SAMPLE_FOLDER.owns(p) for p in written["samples"])
    assert {"metrics.json", "report.html", "report.md", "features.npz"} <= {p.name for p in written["report"]}
    assert all(REPORT_FOLDER.owns(p) for p in written["report"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real", "report", "samples"]  # no temporaries left
