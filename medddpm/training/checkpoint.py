"""Checkpoints on disk: safetensors weights, plain-typed training state, written atomically.

Layout of one checkpoint, ``RUN_DIR/checkpoints/step-00001000/``, and the key of a learner's
``state_dict()`` (``medddpm.training.learner``) that each file holds::

    model.safetensors     "model"            the trained weights
    ema.safetensors       "ema"              the EMA weights (what sampling uses by default)
    training_state.pt     "training_state"   optimizer, LR schedule, grad scaler, step, RNG states:
                                             tensors and plain types only, loaded with
                                             torch.load(weights_only=True)
    meta.json             (not state)        step, resolved config, library versions

A checkpoint is written into a hidden temporary folder, every file fsynced, then renamed into
place: a folder named ``step-N`` is always complete, whatever moment a crash strikes. ``latest``
is the highest such step. Nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medddpm.config import Config, saved_config_from_dict
from medddpm.errors import InputError
from medddpm.output_folder import fsync

CHECKPOINTS = "checkpoints"
STATE_FILES = {"model": "model.safetensors", "ema": "ema.safetensors", "training_state": "training_state.pt"}
"""A learner's state key -> the checkpoint file that holds it (written in this order)."""
FILES = (*STATE_FILES.values(), "meta.json")
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def _plain_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_checkpoint(
    run_dir: Path, step: int, state: dict[str, Any], meta: dict[str, Any], keep_last: int
) -> Path:
    """Write ``checkpoints/step-N/`` atomically, then delete all but the ``keep_last`` newest.

    ``state``: a learner's ``state_dict()``, one file per key (STATE_FILES); ``meta`` goes into
    meta.json beside the step. Also removes the hidden temporary folders that an interrupted earlier
    write left behind.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for key in ("model", "ema"):
        save_file(_plain_state(state[key]), tmp / STATE_FILES[key], metadata={"step": str(step)})
    torch.save(state["training_state"], tmp / STATE_FILES["training_state"])
    (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=2))
    for name in FILES:
        fsync(tmp / name)
    fsync(tmp)
    if final.exists():  # the same step written again (a resumed run interrupted at once)
        old = root / f".old-{final.name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    fsync(root)
    for _, stale in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(stale, ignore_errors=True)
    # Leftovers of writes a crash interrupted (never renamed into place, so never complete).
    for leftover in root.glob(".tmp-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in root.glob(".old-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first. Temporary folders of interrupted writes are ignored."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def resolve_checkpoint(spec: str | Path, run_dir: Path | None = None) -> Path:
    """``latest``, ``step-N`` (within ``run_dir``), a checkpoint folder, or a run folder (its latest)."""
    spec_str = str(spec)
    if run_dir is not None and (spec_str == "latest" or spec_str.startswith("step-")):
        checkpoints = list_checkpoints(run_dir)
        if not checkpoints:
            raise InputError("no complete checkpoint in this run folder (was it trained?)", run_dir)
        if spec_str == "latest":
            return checkpoints[-1][1]
        m = re.fullmatch(r"step-(\d+)", spec_str)
        wanted = int(m.group(1)) if m else -1
        for step, path in checkpoints:
            if step == wanted:
                return path
        have = ", ".join(str(s) for s, _ in checkpoints)
        raise InputError(f"no checkpoint {spec_str} (steps available: {have})", run_dir)
    path = Path(spec)
    if not path.exists():
        raise InputError("no such checkpoint folder", path)
    if path.is_dir():
        is_checkpoint = (path / "meta.json").exists() or _STEP_DIR.match(path.name)
        return path if is_checkpoint else resolve_checkpoint("latest", path)
    raise InputError(
        "a checkpoint is a folder (RUN_DIR/checkpoints/step-N) holding model.safetensors, "
        "ema.safetensors and meta.json; single weight files are not accepted",
        path,
    )


@dataclass
class Checkpoint:
    path: Path
    step: int
    config: Config
    meta: dict[str, Any]

    def file(self, key: str) -> Path:
        """The file that holds the learner state's ``key`` ("model", "ema" or "training_state")."""
        return self.path / STATE_FILES[key]

    def weights(self, ema: bool = True) -> dict[str, torch.Tensor]:
        path = self.file("ema" if ema else "model")
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"corrupt or unreadable weights ({str(e).splitlines()[0]})", path) from None

    def training_state(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        path = self.file("training_state")
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:  # weights_only refuses anything but tensors and plain types
            raise InputError(
                "refused to load the training state: it asks to build objects other than tensors and "
                "plain types (it could run code when unpickled), so it was not unpickled",
                path,
            ) from None
        except Exception as e:  # truncated, empty, not a torch file
            detail = str(e).strip().splitlines()[0].split(". ")[0][:160] if str(e).strip() else ""
            reason = detail or f"{type(e).__name__}: the file is empty or truncated"
            raise InputError(f"corrupt training state ({reason})", path) from None


def open_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint's meta.json and config; weights are read on demand."""
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise InputError(f"incomplete checkpoint: missing {', '.join(missing)}", path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"unreadable meta.json ({e})", path) from None
    if not isinstance(meta, dict) or "config" not in meta or "step" not in meta:
        raise InputError("meta.json lacks 'config' or 'step'", path / "meta.json")
    config = saved_config_from_dict(meta["config"], str(path / "meta.json"))
    return Checkpoint(path=path, step=int(meta["step"]), config=config, meta=meta)


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load a state dict strictly; a mismatch means the checkpoint's config does not fit its weights."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            shapes = f"{tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
            parts.append(f"{len(wrong)} of another shape (e.g. {k}: {shapes})")
        raise InputError(f"weights do not match the checkpoint's model config: {'; '.join(parts)}", source)
    model.load_state_dict(state)
