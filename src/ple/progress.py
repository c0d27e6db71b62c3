"""Progress display: an overall bar with rate and ETA, and a line for the current phase."""

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(
        self, total: int, description: str, completed: int = 0, console: Console | None = None, disable: bool = False
    ):
        self.disable = disable
        self.console = console or Console(stderr=True)
        self._progress = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[rate]}"),
            console=self.console,
            disable=disable,
        )
        self._main = self._progress.add_task(description, total=total, completed=completed, rate="")
        self._phase = self._progress.add_task("", total=None, rate="", visible=False)

    def __enter__(self) -> "Progress":
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def advance(self) -> None:
        self._progress.advance(self._main)
        task = self._progress.tasks[self._main]
        if task.speed:
            self._progress.update(self._main, rate=f"{1 / task.speed:.1f} s/it")

    def phase(self, name: str, total: int | None = None) -> None:
        self._progress.reset(self._phase, description=f"  {name}", total=total, completed=0, visible=True)

    def step(self) -> None:
        self._progress.advance(self._phase)

    def log(self, text: str) -> None:
        if not self.disable:
            self._progress.console.print(text)


def quiet_libraries() -> None:
    """Our own progress bar is the one to watch; the libraries' load/save bars and notices are noise."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
