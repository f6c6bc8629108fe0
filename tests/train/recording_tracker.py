"""A tracker for tests: accelerate's ``GeneralTracker`` API, recording what a trainer sends
(the config at start, every log row with its step, the finish)."""

from __future__ import annotations


def recording_tracker():
    """A fresh ``Recorder`` class; its ``seen`` dict fills as a trainer logs."""
    from accelerate.tracking import GeneralTracker

    class Recorder(GeneralTracker):
        name, requires_logging_directory, main_process_only = "recorder", False, True
        seen: dict = {"config": None, "rows": [], "finished": False}

        def __init__(self):
            super().__init__()

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            Recorder.seen["config"] = values

        def log(self, values, step=None, **kwargs):
            Recorder.seen["rows"].append((step, values))

        def finish(self):
            Recorder.seen["finished"] = True

    return Recorder
