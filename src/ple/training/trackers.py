"""`report_to`: each iteration's metrics also go to the trackers users already run (TensorBoard, Weights & Biases,
trackio, ...), through accelerate's tracker classes, as TRL and accelerate do. metrics.jsonl is written
whatever this says."""

from pathlib import Path

from ple.config_checks import tracker_names
from ple.errors import PLEError
from ple.io import finite_number


class Trackers:
    """The run's trackers, started on the main process with the config as their hyperparameters."""

    def __init__(self, config, run_dir: Path, main: bool):
        self.trackers = []
        names = tracker_names(config.report_to) if main else []
        if not names:
            return
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        run_name = run_dir.resolve().name
        for name in names:
            kind = LOGGER_TYPE_TO_CLASS[name]
            try:
                if kind.requires_logging_directory:
                    tracker = kind(run_name, logging_dir=str(run_dir / "trackers"))
                else:
                    tracker = kind(run_name)
                tracker.start()
            except ImportError as e:
                raise PLEError(f"report_to={name} needs its package ({e.name or e}); pip install it") from None
            tracker.store_init_configuration({k: _plain(v) for k, v in config.to_dict().items()})
            self.trackers.append(tracker)

    def log(self, metrics: dict, step: int) -> None:
        numbers = {k: v for k, v in metrics.items() if finite_number(v)}
        for tracker in self.trackers:
            tracker.log(numbers, step=step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def _plain(value):
    """A hyperparameter value every tracker takes: numbers, text and booleans as they are, the rest as text."""
    return value if isinstance(value, (int, float, str, bool)) else str(value)
