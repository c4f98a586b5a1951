"""Recording: hooks, steps, ranks, filters and the asynchronous writer."""

from accdump.capture.filters import Filters
from accdump.capture.recorder import Recorder, active_recorder, paused, probe, record

__all__ = ["Filters", "Recorder", "active_recorder", "paused", "probe", "record"]
