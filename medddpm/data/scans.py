"""Finding and checking scans: discovery, preflight of every file, and RUN_DIR/dataset.json."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medddpm.config import DataConfig
from medddpm.data.conditions import TrainingConditions
from medddpm.data.labels import TrainingLabels
from medddpm.data.nifti import ScanInfo, is_nifti, read_scan
from medddpm.data.transforms import IntensityMapping, OutputGeometry
from medddpm.errors import InputError
from medddpm.output_folder import atomic_path


def discover_scans(data_dir: str | Path) -> list[Path]:
    """Every .nii / .nii.gz below ``data_dir`` (recursively, hidden files skipped), sorted."""
    root = Path(data_dir)
    if not root.exists():
        raise InputError("no such folder", root)
    if root.is_file():
        if is_nifti(root):
            return [root]
        raise InputError("not a folder nor a NIfTI file (.nii / .nii.gz)", root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and is_nifti(p))
    if not files:
        anything = any(p.is_file() for p in root.rglob("*"))
        why = "no .nii or .nii.gz files in this folder" if anything else "the folder is empty"
        raise InputError(why, root)
    return files


@dataclass
class Preflight:
    """The outcome of reading every input once: the usable scans and the rejected ones with reasons."""

    valid: list[ScanInfo] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def error_report(self) -> str:
        """One line for one unusable scan (path: reason; what to do), else a summary line and one per scan."""
        n_valid = len(self.valid)
        if len(self.skipped) == 1:
            s = self.skipped[0]
            if not n_valid:
                return f"{s['path']}: {s['reason']}"
            rest = f"the other {n_valid} scan{'s' if n_valid != 1 else ''}"
            return f"{s['path']}: {s['reason']}; fix or remove it, or pass --skip-invalid to train on {rest}"
        lines = [f"{len(self.skipped)} of {len(self.valid) + len(self.skipped)} scans are unusable:"]
        lines += [f"  {s['path']}: {s['reason']}" for s in self.skipped]
        lines.append("Fix or remove them, or pass --skip-invalid to train on the rest.")
        return "\n".join(lines)


def preflight(files: Sequence[Path], progress: Callable[[int, int], None] | None = None) -> Preflight:
    """Open and fully read every file; collect every problem rather than stopping at the first."""
    result = Preflight()
    for i, path in enumerate(files):
        try:
            _, _, info = read_scan(path)
            result.valid.append(info)
        except InputError as e:
            reason = str(e).removeprefix(f"{path}: ")
            result.skipped.append({"path": str(path), "reason": reason})
        if progress is not None:
            progress(i + 1, len(files))
    return result


def write_dataset_json(
    path: Path,
    cfg: DataConfig,
    result: Preflight,
    data_dir: Path,
    geometry: OutputGeometry,
    conditions: TrainingConditions | None = None,
    labels: TrainingLabels | None = None,
) -> None:
    """RUN_DIR/dataset.json: inputs used and skipped, and what sampling needs to write true geometry.

    Each file records ``learnt_spacing``: the voxel size (mm, RAS) the model saw it at
    (``medddpm.data.transforms.OutputGeometry``), and with ``conditions`` its variables (raw values,
    null for unknown); ``conditions`` then also records the table and the variables' encoding.
    With ``labels`` each file records its label map, and ``labels`` the folder and label set.
    """
    learnt = zip(result.valid, geometry.per_scan, strict=True)
    files = [{**scan.to_dict(), "learnt_spacing": list(size)} for scan, size in learnt]
    if conditions is not None:
        for record, row in zip(files, conditions.rows, strict=True):
            record["conditions"] = row
    if labels is not None:
        for record, label in zip(files, labels.files, strict=True):
            record["label"] = str(label)
    record = {
        "data_dir": str(data_dir),
        "n_used": len(result.valid),
        "n_skipped": len(result.skipped),
        "files": files,
        "skipped": result.skipped,
        "image_size": list(cfg.image_size),
        "output_spacing": list(geometry.spacing),
        "orientation": "RAS",
        "intensity": {
            "modality": cfg.modality,
            "a_min": cfg.a_min,
            "a_max": cfg.a_max,
            "lower_percentile": cfg.lower_percentile,
            "upper_percentile": cfg.upper_percentile,
            "output_units": IntensityMapping.from_config(cfg).units,
        },
    }
    if conditions is not None:
        record["conditions"] = conditions.record()
    if labels is not None:
        record["labels"] = labels.record()
    with atomic_path(path) as tmp:  # a crash never leaves a half-written dataset.json
        tmp.write_text(json.dumps(record, indent=2))
