"""Progress reporting without printing: library code reports to a ``Progress`` it is given.

The CLI passes a rich-backed implementation; tests and library callers get the silent default.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol


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
    """Progress for the CLI: rich bars on a terminal, plain periodic lines otherwise (pipes, logs, CI).

    A task that ends normally is shown complete; one that ends with an exception (a failure or Ctrl-C)
    stays where the work stopped and says so. Descriptions and info are printed literally (no markup).
    """

    #: seconds between two plain progress lines of one task
    PLAIN_INTERVAL_S = 10.0

    def __init__(self, console: object | None = None) -> None:
        from rich.console import Console

        self._console: Console = console if isinstance(console, Console) else Console(stderr=True, markup=False)
        self._plain = not self._console.is_terminal
        self._progress: Any = None
        if not self._plain:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as _RichProgress

            self._progress = _RichProgress(
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}", markup=False),
                console=self._console,
                transient=False,
            )

    def __enter__(self) -> RichProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Task]:
        if self._plain:
            with self._plain_task(description, total) as task:
                yield task
            return
        progress = self._progress
        task_id = progress.add_task(description, total=total, info="")

        class _Task:
            def advance(self, n: int = 1, **info: object) -> None:
                progress.update(task_id, advance=n, info=_info_text(info))

        try:
            yield _Task()
        except BaseException:
            done = int(progress.tasks[task_id].completed)
            progress.update(task_id, description=f"{description} (stopped at {done})")
            raise
        progress.update(task_id, completed=progress.tasks[task_id].total or progress.tasks[task_id].completed)

    @contextmanager
    def _plain_task(self, description: str, total: int | None) -> Iterator[Task]:
        from rich.text import Text

        console, interval = self._console, self.PLAIN_INTERVAL_S
        state = {"done": 0, "info": "", "last": time.monotonic()}
        started = state["last"]

        def line(suffix: str = "") -> None:
            count = f"{state['done']}/{total}" if total is not None else f"{state['done']}"
            pct = f" ({100 * state['done'] / total:.0f}%)" if total else ""
            elapsed = f" {time.monotonic() - started:.0f}s"
            info = f" {state['info']}" if state["info"] else ""
            console.print(Text(f"{description}: {count}{pct}{elapsed}{info}{suffix}"), soft_wrap=True)

        class _Task:
            def advance(self, n: int = 1, **info: object) -> None:
                state["done"] += n
                if info:
                    state["info"] = _info_text(info)
                now = time.monotonic()
                if now - state["last"] >= interval:
                    state["last"] = now
                    line()

        line()
        try:
            yield _Task()
        except BaseException:
            line(" stopped")
            raise
        if total is not None:
            state["done"] = max(state["done"], total)
        line(" done")


def _info_text(info: dict[str, object]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
