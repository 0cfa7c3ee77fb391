"""Progress reporting without printing: library code reports to a ``Progress`` it is given.

The CLI passes a rich-backed implementation; tests and library callers get the silent default.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


class Task(Protocol):
    def advance(self, n: int = 1, **info: object) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: int | None) -> AbstractContextManager[Task]: ...


class _SilentTask:
    def advance(self, n: int = 1, **info: object) -> None:
        return None


class SilentProgress:
    """The default: report nothing."""

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Task]:
        yield _SilentTask()


class RichProgress:
    """Rich progress bars (used by the CLI)."""

    def __init__(self, console: object | None = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as _RichProgress

        self._progress = _RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        )

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Task]:
        task_id = self._progress.add_task(description, total=total, info="")
        progress = self._progress

        class _Task:
            def advance(self, n: int = 1, **info: object) -> None:
                text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
                progress.update(task_id, advance=n, info=text)

        try:
            yield _Task()
        finally:
            progress.update(task_id, completed=progress.tasks[task_id].total or 0)
