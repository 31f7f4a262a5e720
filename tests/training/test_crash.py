"""Crash safety of ``medddpm train``: SIGKILL at any moment leaves the newest complete checkpoint
loadable and ``--resume`` carries on from it; Ctrl-C (SIGINT) and SIGTERM write a checkpoint and exit
128 + the signal's number.

Real processes (``python -m medddpm train ... --config tiny``), killed from here. The four are
started together (their start-up, mostly importing torch and MONAI, overlaps) and each test then
drives its own; resuming happens in this process, where those imports are already paid for.

To SIGKILL a process while it writes a checkpoint, the test starts it through a launcher that
wraps ``medddpm.training.checkpoint.save_file`` to stall after the EMA weights of the second checkpoint,
inside the hidden temporary folder: the timing comes from the test, not from a hook in the code.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from medddpm.cli import main
from medddpm.runtime import torch_threads
from medddpm.training.checkpoint import list_checkpoints, open_checkpoint
from tests.conftest import blob_volume, write_nifti

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 300  # seconds; generous, for a loaded machine

STALL_IN_SAVE = """
import sys, time
import medddpm.training.checkpoint as checkpoint

save_file, calls = checkpoint.save_file, []

def stalling_save_file(*args, **kwargs):
    save_file(*args, **kwargs)
    calls.append(args[1])
    if len(calls) == int(sys.argv[1]):
        time.sleep(600)  # killed here, with the checkpoint half-written

checkpoint.save_file = stalling_save_file
from medddpm.cli import main
main(sys.argv[2:])
"""

STALL_IN_STEP = """
import sys, time
from pathlib import Path
import medddpm.training.loop as loop

train_step, calls = loop.train_step, []

def stalling_train_step(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        Path(sys.argv[1]).touch()
        time.sleep(600)  # a very long step: the first Ctrl-C waits for it, the second does not
    return train_step(*args, **kwargs)

loop.train_step = stalling_train_step
from medddpm.cli import main
main(sys.argv[2:])
"""


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        # A shell that starts jobs in the background makes them ignore SIGINT, and Python then
        # installs no KeyboardInterrupt handler: give the child the default a terminal gives.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.fixture(autouse=True)
def one_thread():
    """Resumes run here, beside the training processes: one thread each avoids OpenMP spin-waits."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[subprocess.Popen, Path, Path, Path]]:
    """name -> (process, data folder, run folder, stderr log), all started at once."""
    root = tmp_path_factory.mktemp("crash")
    rng = np.random.default_rng(0)
    scans = root / "scans"
    for i in range(3):
        write_nifti(scans / f"s{i}.nii.gz", blob_volume(rng))
    train = ["train", str(scans), "--config", "tiny"]
    every_step = ["--checkpoint-every", "1"]
    commands = {
        "after_checkpoint": ["-m", "medddpm", *train, *every_step, "--max-steps", "3"],
        # the 4th weights file written is step 2's EMA: stall there, half-way through checkpoint 2
        "during_checkpoint": ["-c", STALL_IN_SAVE, "4", *train, *every_step, "--max-steps", "2"],
        "SIGINT": ["-m", "medddpm", *train, "--max-steps", "1000", "--checkpoint-every", "1000"],
        "SIGTERM": ["-m", "medddpm", *train, "--max-steps", "1000", "--checkpoint-every", "1000"],
        "second_SIGINT": ["-c", STALL_IN_STEP, str(root / "stalled"), *train, "--max-steps", "1000"],
    }
    started = {}
    for name, command in commands.items():
        run, log = root / name, root / f"{name}.log"
        started[name] = (_start([*command, "--output", str(run)], log), scans, run, log)
    yield started
    for process, *_ in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for(condition: Callable[[], object], process: subprocess.Popen, log: Path) -> object:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if process.poll() is not None:
            pytest.fail(f"training exited ({process.returncode}) too early:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)
    pytest.fail(f"timed out; training log:\n{log.read_text()[-3000:]}")


def assert_loadable(checkpoint: Path) -> None:
    ckpt = open_checkpoint(checkpoint)
    assert ckpt.weights(ema=True) and ckpt.weights(ema=False)
    assert ckpt.training_state()["step"] == ckpt.step


def resume_to_the_end(scans: Path, run: Path, capsys, *extra: str) -> str:
    with pytest.raises(SystemExit) as e:
        main(["train", str(scans), "--output", str(run), "--resume", *extra])
        raise SystemExit(0)
    err = capsys.readouterr().err
    assert e.value.code in (0, None), err
    return err


def squeeze(text: str) -> str:
    """Text without whitespace: rich wraps long lines (paths included) at the console width."""
    return "".join(text.split())


def metrics_steps(run: Path) -> list[int]:
    with (run / "metrics.csv").open(newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def test_sigkill_right_after_a_checkpoint_appears(runs, capsys):
    process, scans, run, log = runs["after_checkpoint"]
    wait_for(lambda: (run / "checkpoints" / "step-00000001").is_dir(), process, log)
    process.send_signal(signal.SIGKILL)
    process.wait(TIMEOUT)
    assert process.returncode == -signal.SIGKILL
    complete = list_checkpoints(run)
    assert complete, "the checkpoint that appeared must survive the kill"
    assert_loadable(complete[-1][1])

    err = resume_to_the_end(scans, run, capsys)
    assert "Resuming from" in err
    assert [s for s, _ in list_checkpoints(run)][-1] == 3
    assert metrics_steps(run) == [1, 2, 3]  # rows past the checkpoint were redone, once


def test_sigkill_while_a_checkpoint_is_written(runs, capsys):
    process, scans, run, log = runs["during_checkpoint"]
    checkpoints = run / "checkpoints"
    partial = wait_for(
        lambda: [p for p in checkpoints.glob(".tmp-step-00000002-*") if (p / "ema.safetensors").exists()],
        process,
        log,
    )
    process.send_signal(signal.SIGKILL)
    process.wait(TIMEOUT)
    leftover = partial[0]
    assert leftover.is_dir() and not (leftover / "training_state.pt").exists()
    assert [s for s, _ in list_checkpoints(run)] == [1], "the half-written step 2 must not count"
    assert_loadable(checkpoints / "step-00000001")

    err = resume_to_the_end(scans, run, capsys)
    assert "(step1)" in squeeze(err)
    assert [s for s, _ in list_checkpoints(run)] == [1, 2]
    assert not leftover.exists() and not list(checkpoints.glob(".*")), "leftovers are cleaned up"
    assert metrics_steps(run) == [1, 2]


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_stop_signal_writes_a_checkpoint_and_exits_128_plus_its_number(name, runs, capsys):
    """Ctrl-C (SIGINT, exit 130) and SIGTERM (a scheduler's or kill's, exit 143) both stop after the
    current step with a checkpoint that --resume continues from."""
    process, scans, run, log = runs[name]
    wait_for(lambda: (run / "metrics.csv").is_file() and metrics_steps(run), process, log)
    signum = getattr(signal, name)
    process.send_signal(signum)
    assert process.wait(TIMEOUT) == 128 + signum, log.read_text()[-3000:]
    text = squeeze(log.read_text())
    assert "Traceback" not in text
    step, checkpoint = list_checkpoints(run)[-1]
    assert 0 < step < 1000  # written by the interrupt, not on schedule
    by = " (SIGTERM)" if name == "SIGTERM" else ""
    assert squeeze(f"Interrupted at step {step}{by}; checkpoint saved in {checkpoint}") in text
    assert squeeze(f"Continue with: medddpm train {scans} --output {run} --resume") in text
    assert_loadable(checkpoint)

    resume_to_the_end(scans, run, capsys, "--max-steps", str(step + 1))
    assert list_checkpoints(run)[-1][0] == step + 1


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(runs):
    """The first Ctrl-C waits for the step under way (here one that would last 10 minutes); the second
    stops at once: exit 130, no checkpoint, no traceback."""
    process, scans, run, log = runs["second_SIGINT"]
    wait_for(lambda: (run.parent / "stalled").exists(), process, log)  # inside step 2
    process.send_signal(signal.SIGINT)
    time.sleep(1)
    assert process.poll() is None, "the first Ctrl-C must let the step finish"
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    try:
        code = process.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail("a second Ctrl-C did not stop training at once")
    assert code == 130, log.read_text()[-3000:]
    assert time.monotonic() - started < 60
    text = squeeze(log.read_text())
    assert "Traceback" not in text
    said = (
        "Stopped at once, without a checkpoint of the step under way; "
        f"--resume continues from the last checkpoint in {run / 'checkpoints'}"
    )
    assert squeeze(said) in text
    assert list_checkpoints(run) == [] and metrics_steps(run) == [1]


@pytest.mark.parametrize("name", ["sample_0000.nii.gz", "sample_0000.mha"])
def test_an_interrupted_volume_write_leaves_no_file(name: str, tmp_path: Path, monkeypatch):
    """Samples (and evaluate's files) are written beside their place and renamed into it: a write
    cut short leaves neither a partial file under the final name nor the temporary one."""
    import nibabel as nib
    import SimpleITK as sitk

    from medddpm.data.nifti import write_volume

    def interrupted(image, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(nib, "save", interrupted)
    monkeypatch.setattr(sitk, "WriteImage", interrupted)
    volume = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(KeyboardInterrupt):
        write_volume(volume, tmp_path / name, (1.0, 1.0, 1.0))
    assert list(tmp_path.iterdir()) == []
