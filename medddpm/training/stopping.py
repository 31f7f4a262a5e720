"""When training stops before ``train.max_steps``: a stop signal (Ctrl-C, SIGTERM) or the time budget.

Both are decided alike on every process under torchrun (a collective), so that all of them stop
after the same step and the checkpoint written on the way out is consistent.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TypeVar

import torch

from medddpm.runtime import Distributed

T = TypeVar("T")


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM (what a batch scheduler such as SLURM sends before it kills a job,
    and what ``kill`` sends) while training. The first one asks to stop once the current step is
    done; every process then stops after the same step, so the checkpoint written on the way out
    is consistent (under torchrun, which passes signals on to each process, one can arrive in the
    middle of a step or of a collective). A second one stops at once, without a checkpoint.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self.forced = False
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def request(self, signum: int) -> None:
        if self.signal is None:
            self.signal = signum

    def listen(self) -> None:
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals keep Python's own behaviour
                break

    def stop_listening(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.request(signum)

    def call(self, callback: Callable[[T], None], arg: T) -> None:
        """``callback(arg)``; a KeyboardInterrupt it raises (a progress bar's Ctrl-C) is a stop request."""
        try:
            callback(arg)
        except KeyboardInterrupt:
            self.request(signal.SIGINT)

    def agreed(self, dist: Distributed, device: torch.device) -> bool:
        """Whether any process was asked to stop; a collective under torchrun, so all answer alike."""
        if not dist.enabled:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


def out_of_time(max_minutes: float | None, seconds: float, dist: Distributed, device: torch.device) -> bool:
    """Whether the time budget is spent; under torchrun rank 0's clock decides for every rank."""
    if max_minutes is None:
        return False
    spent = torch.tensor([float(seconds >= max_minutes * 60)], device=device)
    if dist.enabled:
        torch.distributed.broadcast(spent, src=0)
    return bool(spent.item())
