"""Stop requests (Ctrl-C, SIGTERM, a callback's KeyboardInterrupt) and the time budget, in one process."""

from __future__ import annotations

import signal

import pytest
import torch

from medddpm.runtime import Distributed
from medddpm.training.stopping import StopRequest, out_of_time

CPU = torch.device("cpu")


def test_first_signal_asks_to_stop_the_second_stops_at_once():
    stop = StopRequest()
    before = signal.getsignal(signal.SIGTERM)
    stop.listen()
    try:
        signal.raise_signal(signal.SIGTERM)  # handled: no exception, a request
        assert stop.requested and stop.signal == signal.SIGTERM and not stop.forced
        assert stop.agreed(Distributed(), CPU)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert stop.forced and stop.signal == signal.SIGTERM  # the first one is what is reported
    finally:
        stop.stop_listening()
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_callbacks_keyboard_interrupt_is_a_ctrl_c():
    stop = StopRequest()
    stop.call(lambda entry: None, 1)
    assert not stop.agreed(Distributed(), CPU)

    def pressed(entry) -> None:
        raise KeyboardInterrupt

    stop.call(pressed, 1)
    assert stop.signal == signal.SIGINT and not stop.forced


@pytest.mark.parametrize(
    ("max_minutes", "seconds", "spent"), [(None, 1e9, False), (1.0, 59.9, False), (1.0, 60.0, True)]
)
def test_time_budget(max_minutes, seconds, spent):
    assert out_of_time(max_minutes, seconds, Distributed(), CPU) is spent
