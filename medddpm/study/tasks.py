"""The three reader tasks as one table: what a reader is asked, and which answers are complete.

- ``binary``: one volume; real or synthetic, and a confidence 1-5 (Park et al. 2021's visual Turing test).
- ``2afc``: two volumes side by side, one real and one synthetic; which is real, and a confidence 1-5.
  Chance is exactly 50% whatever the reader believes about prevalence.
- ``rating``: one volume on Khader et al. 2023's three 4-level scales: realism, consistency between
  slices, anatomical correctness (1 = poor, 4 = excellent).

Every task also takes a free-text comment. The reader page (medddpm.study.pages) draws its form from
``questions``, so a new task is one entry here plus its scoring in medddpm.study.analysis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Question:
    key: str
    label: str
    choices: tuple[tuple[str, str], ...]
    """(value stored, label shown), in the order shown."""

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "choices": [list(c) for c in self.choices]}


def _scale(n: int, low: str, high: str) -> tuple[tuple[str, str], ...]:
    return tuple(
        (str(i), f"{i}{' ' + low if i == 1 else ' ' + high if i == n else ''}") for i in range(1, n + 1)
    )


CONFIDENCE = Question("confidence", "How confident are you?", _scale(5, "(guess)", "(certain)"))


@dataclass(frozen=True)
class Task:
    key: str
    volumes_per_case: int
    """1, or 2 for a pair shown side by side (A left, B right)."""
    instructions: str
    questions: tuple[Question, ...]
    verdict: str | None
    """The question whose answer is scored right or wrong against the key (None: ratings only)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "volumes_per_case": self.volumes_per_case,
            "instructions": self.instructions,
            "questions": [q.to_dict() for q in self.questions],
        }

    def complete(self, answer: dict[str, Any]) -> bool:
        """Whether ``answer`` holds a valid choice for every question."""
        return all(str(answer.get(q.key)) in {v for v, _ in q.choices} for q in self.questions)


RATING_SCALES = {
    "realism": "How realistic is this volume?",
    "consistency": "How consistent are neighbouring slices (no jumps, seams or drift)?",
    "anatomy": "How correct is the anatomy?",
}

TASKS = {
    "binary": Task(
        "binary",
        1,
        "Each case is one volume, real or synthetic. Decide which, and how confident you are.",
        (Question("answer", "This volume is", (("real", "real"), ("synthetic", "synthetic"))), CONFIDENCE),
        "answer",
    ),
    "2afc": Task(
        "2afc",
        2,
        "Each case shows two volumes: exactly one is real. Choose it, and say how confident you are.",
        (Question("answer", "The real volume is", (("A", "A (left)"), ("B", "B (right)"))), CONFIDENCE),
        "answer",
    ),
    "rating": Task(
        "rating",
        1,
        "Each case is one volume. Rate it on the three scales (1 = poor, 4 = excellent).",
        tuple(Question(k, label, _scale(4, "(poor)", "(excellent)")) for k, label in RATING_SCALES.items()),
        None,
    ),
}
