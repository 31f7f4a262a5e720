"""The demo: the cohort made from the MNI152 template, and the demo command end to end (tiny config)."""

import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from medddpm.cli import main
from medddpm.config import build_config
from medddpm.data.nifti import read_scan
from medddpm.demo import INSTALL_HINT, Cohort, make_cohort
from medddpm.output_folder import DEMO_FOLDER
from medddpm.runtime import available_cores

pytest.importorskip("nilearn")


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


def test_cohort_is_real_ras_nifti_with_the_stated_spacing_and_deterministic(tmp_path: Path):
    a = make_cohort(tmp_path / "a", n_subjects=4, image_size=16, seed=3)
    b = make_cohort(tmp_path / "b", n_subjects=4, image_size=16, seed=3)
    c = make_cohort(tmp_path / "c", n_subjects=2, image_size=16, seed=4)
    assert a.spacing == 12.0  # 192 mm field of view over 16 voxels
    assert [p.parent.name for p in a.train + a.heldout] == ["train"] * 3 + ["heldout"]
    for path in a.train + a.heldout:
        img = nib.load(str(path))
        assert img.shape == (16, 16, 16)
        assert np.allclose(img.header.get_zooms()[:3], 12.0)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        _, data, info = read_scan(path)  # passes training's preflight
        assert info.axcodes == "RAS" and info.spacing == [12.0, 12.0, 12.0]
        # a head in the middle of a dark background
        assert data[8, 8, 8] > 0.3 * data.max() and data[0, 0, 0] == 0.0
    volumes = {
        name: [np.asarray(nib.load(str(p)).dataobj) for p in cohort.train + cohort.heldout]
        for name, cohort in (("a", a), ("b", b), ("c", c))
    }
    assert all(np.array_equal(x, y) for x, y in zip(volumes["a"], volumes["b"], strict=True))
    assert not np.allclose(volumes["a"][0], volumes["c"][0])
    assert not np.allclose(volumes["a"][0], volumes["a"][1])  # subjects differ from one another
    record = json.loads((tmp_path / "a" / "cohort.json").read_text())
    assert record["n_heldout"] == 1 and record["spacing_mm"] == [12.0] * 3 and record["seed"] == 3


def test_cohort_groups_differ_in_head_volume_and_are_written_as_train_tables(tmp_path: Path):
    from medddpm.data.conditions import match_table

    cohort = make_cohort(tmp_path, n_subjects=12, image_size=16, seed=0)
    splits = ((cohort.train, cohort.train_conditions), (cohort.heldout, cohort.heldout_conditions))
    for files, table in splits:
        matched = match_table(table, files, files[0].parent)  # what train and evaluate read
        assert [r["group"] for r in matched.rows] == [
            "large" if int(f.name[8:11]) % 2 == 0 else "small" for f in files
        ]
    assert matched.spec.variables[0].categories == ("large", "small") and len(matched.rows) == 3

    def head_volume(path: Path) -> float:
        """Voxels above a quarter of the scan's 99th percentile (intensities vary with the subject)."""
        data = np.asarray(nib.load(str(path)).dataobj)
        return float((data > 0.25 * np.percentile(data, 99)).sum())

    volumes: dict[str, list[float]] = {"large": [], "small": []}
    for i, path in enumerate(cohort.train + cohort.heldout):
        volumes["large" if i % 2 == 0 else "small"].append(head_volume(path))
    large, small = np.mean(volumes["large"]), np.mean(volumes["small"])
    assert small / large < 0.8  # 0.88³ = 0.68 by construction
    assert max(volumes["small"]) < min(volumes["large"])  # no overlap between the groups


def test_demo_command_end_to_end_on_the_tiny_config(tmp_path: Path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--output", str(out), "--config", "tiny", "--set", "train.max_steps=100000"]
    args += ["--set", "train.preview_every=1000", "--minutes", "0.02", "--subjects", "8", "--num", "4"]
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    # stopped by the time budget, with a checkpoint and a final preview
    steps = [int(p.name.removeprefix("step-")) for p in (out / "run" / "checkpoints").glob("step-*")]
    last_logged = int((out / "run" / "metrics.csv").read_text().splitlines()[-1].split(",")[0])
    assert steps and max(steps) == last_logged < 100000
    assert len(list((out / "run" / "previews").glob("step-*.png"))) == 1
    assert len(list((out / "cohort" / "train").glob("*.nii.gz"))) == 6
    assert len(list((out / "samples").glob("sample_*.nii.gz"))) == 4
    assert (out / "samples" / "preview.png").is_file()
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["n_real"] == 2 and metrics["n_synthetic"] == 4
    assert np.isfinite(metrics["fid"]) and 0 <= metrics["ms_ssim_synthetic"] <= 1
    # trained on the cohort's groups, sampled in their proportions, checked against the held-out table
    meta = next((out / "run" / "checkpoints").glob("step-*/meta.json"))
    assert "conditioning" in json.loads(meta.read_text())
    sidecar = json.loads((out / "samples" / "sample_0000.json").read_text())
    assert sidecar["conditions"]["group"] in ("large", "small")
    (check,) = metrics["conditions"]["check"]
    assert check["variable"] == "group" and check["n_real"] == 2  # one scan a group: too few to check
    assert "at least 2 categories with 2 volumes" in check["unavailable"]
    assert str(out / "report" / "report.html") in stderr.replace("\n", "")
    assert "samples preview" in stderr
    likeness = re.search(r"synthetic (-?[\d.]+), held-out real scans (-?[\d.]+)", " ".join(stdout.split()))
    assert likeness and all(-1 <= float(v) <= 1 for v in likeness.groups()), stdout
    cores = available_cores()  # all of them by default, not cores minus the load average
    assert f"({cores} CPU thread{'s' if cores > 1 else ''})" in " ".join(stderr.split())
    assert all(DEMO_FOLDER.owns(p) for p in out.iterdir())  # what --overwrite would replace

    # a second demo into the same folder needs --overwrite
    code, _, stderr = run_cli(["demo", "--output", str(out), "--config", "tiny"], capsys)
    assert code == 2 and "--overwrite" in stderr and len(stderr.strip().splitlines()) == 1


def test_without_nilearn_the_demo_says_what_to_install(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "nilearn", None)  # import nilearn now raises ImportError
    monkeypatch.setitem(sys.modules, "nilearn.datasets", None)
    code, _, stderr = run_cli(["demo", "--output", str(tmp_path / "demo")], capsys)
    assert code == 2
    assert stderr.strip() == f"error: {INSTALL_HINT}" and 'pip install "medddpm[demo]"' in stderr
    assert not (tmp_path / "demo").exists()


@pytest.fixture
def fake_stages(monkeypatch) -> dict[str, list[int]]:
    """The demo's four stages replaced by stand-ins that write a file each and record the torch
    threads they ran with: the demo's own logic in a second."""
    import torch

    threads: dict[str, list[int]] = {}

    def record(stage: str, folder: Path) -> None:
        threads.setdefault(stage, []).append(torch.get_num_threads())
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stage}.txt").write_text("new")

    def cohort(out_dir, n_subjects, image_size, seed, log):
        record("cohort", out_dir)
        return Cohort(out_dir, [out_dir / "a.nii.gz"], [out_dir / "b.nii.gz"], image_size, 12.0)

    def train(cfg, data_dir, run_dir, log, on_step, conditions=None, resume=False, stop_after=None):
        record("train", run_dir)
        return SimpleNamespace(run_dir=run_dir, step=3, checkpoint=run_dir / "step-3", interrupted=False)

    def sample(run_dir, out_dir, num, **kwargs):
        record("sample", out_dir)
        return SimpleNamespace(out_dir=out_dir, files=[])

    def evaluate(real_dir, synth_dir, report_dir, **kwargs):
        record("evaluate", report_dir)
        return SimpleNamespace(report_dir=report_dir, html=report_dir / "report.html", metrics={})

    monkeypatch.setattr("medddpm.demo.make_cohort", cohort)
    monkeypatch.setattr("medddpm.training.loop.train", train)
    monkeypatch.setattr("medddpm.inference.sample_to_folder.sample_to_folder", sample)
    monkeypatch.setattr("medddpm.evaluation.evaluate.evaluate", evaluate)
    monkeypatch.setattr(
        "medddpm.demo.likeness", lambda cfg, cohort, samples: {"synthetic": 0.5, "heldout": 0.9}
    )
    monkeypatch.setattr("medddpm.evaluation.report.summary_table", lambda metrics: "metrics table")
    return threads


@pytest.mark.parametrize("asked", [None, "more than the cores"])
def test_demo_runs_on_every_core_unless_told_and_says_how_many(
    asked, fake_stages, tmp_path, capsys, monkeypatch
):
    import torch

    monkeypatch.setattr(os, "getloadavg", lambda: (8.0, 8.0, 8.0))  # a busy machine: still every core
    expected = available_cores() if asked is None else available_cores() + 1
    before = torch.get_num_threads()
    args = ["demo", "--output", str(tmp_path / "demo"), "--config", "tiny", "--minutes", "0.01"]
    code, stdout, stderr = run_cli(args + ([] if asked is None else ["--threads", str(expected)]), capsys)
    assert code == 0, stderr
    plural = "s" if expected > 1 else ""
    said = " ".join(stderr.split())
    steps = build_config("tiny").train.max_steps
    assert (
        f"Training for {steps} steps or 0.01 minutes, whichever ends first ({expected} CPU thread{plural})"
        in said
    )
    assert "Demo done" in said and "(3 training steps)" in said
    assert fake_stages == {stage: [expected] for stage in ("cohort", "train", "sample", "evaluate")}
    assert torch.get_num_threads() == before  # restored afterwards
    assert "metrics table" in stdout


def test_demo_overwrite_replaces_its_parts_and_nothing_else(fake_stages, tmp_path, capsys):
    out = tmp_path / "demo"
    for part in ("cohort", "run", "samples", "report"):
        (out / part).mkdir(parents=True)
        (out / part / "earlier.txt").write_text("earlier demo")
    (out / "notes.txt").write_text("mine")
    (out / "mine").mkdir()
    args = ["demo", "--output", str(out), "--config", "tiny", "--minutes", "0.01", "--threads", "1"]
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and "output folder is not empty" in stderr and "--overwrite" in stderr
    assert (out / "run" / "earlier.txt").exists() and not (out / "run" / "train.txt").exists()
    code, _, stderr = run_cli([*args, "--overwrite"], capsys)
    assert code == 0, stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "cohort", "cohort/cohort.txt", "mine", "notes.txt", "report", "report/evaluate.txt",
        "run", "run/train.txt", "samples", "samples/sample.txt",
    ]  # fmt: skip


def test_threads_below_one_is_refused(tmp_path, capsys):
    code, _, stderr = run_cli(["demo", "--output", str(tmp_path / "demo"), "--threads", "0"], capsys)
    assert code == 2 and stderr.strip() == "error: --threads must be at least 1; got 0"
    assert not (tmp_path / "demo").exists()


class FakeMachine:
    """Stands in for ``medddpm.training.loop.train`` and for the clock ``medddpm.demo`` reads: step k
    takes ``pace(k)`` seconds of a clock that only the steps move. Keeps every call (train section,
    resume, stop_after, torch threads at the call) and the torch threads of every step."""

    def __init__(self, pace):
        self.pace, self.now, self.step = pace, 0.0, 0
        self.calls: list[tuple] = []
        self.threads: list[int] = []

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr("medddpm.training.loop.train", self.train)
        monkeypatch.setattr("medddpm.demo.time", SimpleNamespace(perf_counter=lambda: self.now))

    def train(self, cfg, data_dir, run_dir, *, resume=False, conditions=None, log, on_step, stop_after=None):
        import torch

        from medddpm.training.monitor import StepLog

        self.calls.append((cfg.train, resume, stop_after, torch.get_num_threads()))
        first, t0 = (self.step if resume else 0), self.now
        self.step = stop_after or cfg.train.max_steps
        for step in range(first + 1, self.step + 1):
            self.threads.append(torch.get_num_threads())
            self.now += self.pace(step)
            if on_step is not None:
                on_step(StepLog(step, cfg.train.max_steps, 0.1, 1e-3, 1.0, 0, self.now - t0))
        return SimpleNamespace(step=self.step, interrupted=False)


def fit(done: int, spent: float, pace: float) -> int:
    """The demo config's steps for 10 minutes: 600 s less those spent, 16 x 30 sampling calls at a
    sixth of a step each and 20 s of evaluation; at least ``done``, at most its max_steps."""
    return min(
        build_config("demo").train.max_steps, done + max(0, int((600 - spent - 80 * pace - 20) // pace))
    )


@pytest.mark.parametrize("pace", [0.5, 0.01, 6.0], ids=["fitted", "capped-at-max-steps", "no-time-left"])
def test_demo_times_its_warm_up_and_fits_its_steps_to_the_minutes(pace, tmp_path, monkeypatch):
    """The demo trains its warm-up, times it, resumes for the steps that end the demo in its minutes
    (at most the config's max_steps), pauses after about a minute of them, times them again and
    fits again: the learning-rate decay runs to its end on a slow machine too."""
    from medddpm.demo import RETIME_SECONDS, train_in_time

    cfg = build_config("demo")
    warmup, ceiling = cfg.train.warmup_steps, cfg.train.max_steps
    machine, progress, lines = FakeMachine(lambda step: pace), [], []
    machine.install(monkeypatch)
    started = -100.2  # cohort and set-up took 100.2 s
    result = train_in_time(cfg, Cohort(tmp_path, [], [], 32, 6.0), tmp_path / "run", 10.0, started, 16, 2,
                           lines.append, progress.append)  # fmt: skip

    timed, resume, stop_after, _ = machine.calls[0]
    assert (timed.max_steps, timed.preview_every, resume, stop_after) == (warmup, 0, False, None)
    assert {e.max_steps for e in progress[:warmup]} == {ceiling}  # the bar spans the whole run
    first = fit(warmup, 100.2 + warmup * pace, pace)
    assert f"Training for {first} steps (at most {ceiling})" in lines[1]
    if first == warmup:  # no time left after the warm-up
        assert len(machine.calls) == 1 and result.step == warmup
        return
    retimed = warmup + int(RETIME_SECONDS / pace)
    if retimed >= first:  # too few steps to time again: one more call
        assert [c[1:3] for c in machine.calls[1:]] == [(True, None)] and first == ceiling
        assert result.step == first
        return
    paused, resume, stop_after, _ = machine.calls[1]
    assert (paused.max_steps, resume, stop_after) == (first, True, retimed)
    steps = fit(retimed, 100.2 + retimed * pace, pace)
    assert steps == first  # the same pace fits the same steps
    assert f"Re-timed steps {warmup + 1}-{retimed} at {pace:.2f} s a step: training for {steps}" in lines[-1]
    last, resume, stop_after, _ = machine.calls[2]
    assert (last.max_steps, resume, stop_after, result.step) == (steps, True, None, steps)
    assert last.max_minutes == pytest.approx(1.25 * pace * (steps - retimed) / 60)


def test_a_moment_of_load_in_the_warm_up_costs_no_steps(tmp_path, monkeypatch):
    """Another program busy during the warm-up (0.6 s a step, then 0.2) makes the first fit short;
    the re-timed stretch, with one 10-second hiccup in it, gives the pace of the rest, and the demo
    trains the steps that fill its minutes."""
    from medddpm.demo import RETIME_SECONDS, train_in_time

    cfg = build_config("demo")
    warmup = cfg.train.warmup_steps
    machine, lines = FakeMachine(lambda step: 0.6 if step <= warmup else 10.0 if step == 100 else 0.2), []
    machine.install(monkeypatch)
    result = train_in_time(cfg, Cohort(tmp_path, [], [], 32, 6.0), tmp_path / "run", 10.0, -30.0, 16, 2,
                           lines.append, None)  # fmt: skip
    first = fit(warmup, 30 + 0.6 * warmup, 0.6)
    retimed = warmup + int(RETIME_SECONDS / 0.6)
    spent = 30 + 0.6 * warmup + 10.0 + 0.2 * (retimed - warmup - 1)
    steps = fit(retimed, spent, 0.2)
    assert [c[0].max_steps for c in machine.calls] == [warmup, first, steps] and steps > first + 1000
    assert "at 0.20 s a step:" in lines[-1] and result.step == steps


def test_the_steady_pace_leaves_out_hold_ups_and_keeps_regular_costs():
    from medddpm.demo import steady_pace

    regular = [0.2, 0.2, 0.2, 0.2, 0.3] * 20  # every fifth step logs: 0.22 s a step on average
    assert steady_pace(regular) == pytest.approx(0.22)  # the median, 0.2, would overrun the minutes
    assert steady_pace([*regular, 10.0, 3.0]) == pytest.approx(0.22)


@pytest.mark.parametrize(
    ("choose", "busy", "threads_after"),
    [(True, False, 2), (True, True, 1), (False, True, 2)],
    ids=["idle", "busy", "told-its-threads"],
)
def test_the_warm_up_tries_one_thread_and_keeps_the_faster(
    choose, busy, threads_after, tmp_path, monkeypatch
):
    """Asked to choose, the demo times the second half of its warm-up on one thread: on idle cores two
    threads win, on cores another program keeps busy one does; the faster pace fits the steps. Told its
    threads (--threads N), it keeps them throughout, even where one would be faster."""
    import torch

    from medddpm.demo import TIMED_FROM, train_in_time
    from medddpm.runtime import torch_threads

    cfg = build_config("demo")
    pace = {2: 0.6 if busy else 0.2, 1: 0.3}  # seconds a step on that many threads
    machine, lines = FakeMachine(lambda step: pace[torch.get_num_threads()]), []
    machine.install(monkeypatch)
    with torch_threads(2):
        cohort = Cohort(tmp_path, [], [], 32, 6.0)
        train_in_time(cfg, cohort, tmp_path / "run", 10.0, 0.0, 16, 2, lines.append, None, choose)
        after = torch.get_num_threads()
    warmup, switch = cfg.train.warmup_steps, (TIMED_FROM + cfg.train.warmup_steps) // 2
    assert after == threads_after and {c[3] for c in machine.calls[1:]} == {threads_after}
    assert machine.threads[warmup:] == [threads_after] * (len(machine.threads) - warmup)
    fitted = next(line for line in lines if line.startswith("Training for"))
    if not choose:
        assert machine.threads[:warmup] == [2] * warmup
        assert f"{pace[2]:.2f} s a step here, so that" in fitted
        return
    assert machine.threads[:warmup] == [2] * switch + [1] * (warmup - switch)
    chosen = min(pace.values())
    assert f"{chosen:.2f} s a step here on {threads_after} thread" in fitted
    assert f"2 threads: {pace[2]:.2f} s, 1 thread: 0.30 s" in fitted
