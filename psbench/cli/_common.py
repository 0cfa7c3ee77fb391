"""One console, logging and failure policy for every ``psbench`` command.

- Output goes through :data:`console` (stdout) and :data:`err_console` (stderr), both with rich markup
  OFF: paths, ids and messages are printed literally (``data[x]`` stays ``data[x]``). Styling is
  applied with :class:`rich.text.Text`, never with markup in user text.
- Logging: warnings reach the terminal by default, ``-v`` shows info, ``-vv`` debug (and tracebacks).
- Failures: a user error (bad argument, file, key or value) prints ONE line ``error: ...`` and exits 2;
  Ctrl-C exits 130 with a line saying what was kept and how to continue; click's usage errors are
  one line too. Every command is wrapped by :func:`guarded`, which also adds ``--verbose/-v``.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

try:  # typer >= 0.2x vendors its own click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - typer on top of click
    from click.exceptions import NoArgsIsHelpError, UsageError  # type: ignore[no-redef]

from psbench.registry import UnknownKeyError

if TYPE_CHECKING:
    from psbench.progress import Task

USER_ERROR_EXIT = 2
INTERRUPT_EXIT = 130

console = Console(markup=False, highlight=False)
err_console = Console(stderr=True, markup=False, highlight=False)

log = logging.getLogger(__name__)


class UserError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit code 2."""


#: exceptions that mean bad input (the library names the file / key / value); anything else is a bug
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    UnknownKeyError,
    ValueError,
    OSError,
    RuntimeError,
    FloatingPointError,
)

VERBOSE_HELP = "More output: -v shows info messages, -vv debug messages and tracebacks (warnings are always shown)."
Verbosity = Annotated[int, typer.Option("--verbose", "-v", count=True, help=VERBOSE_HELP)]


# -- consoles ---------------------------------------------------------------------------------------------
def _width(stream: Any) -> int | None:
    """$COLUMNS if set; the terminal's width on a terminal (None: rich asks); else 200 (logs, pipes, CI)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    isatty = getattr(stream, "isatty", None)
    return None if isatty is not None and isatty() else 200


def refresh_consoles() -> None:
    """Re-read the output width (the streams may have changed since import, e.g. under a test runner)."""
    console.width = _width(sys.stdout)  # type: ignore[assignment]
    err_console.width = _width(sys.stderr)  # type: ignore[assignment]


def one_line(text: object) -> str:
    """``text`` on one line: line breaks and runs of spaces become one space."""
    return " ".join(str(text).split())


def print_error(message: object) -> None:
    """``error: <message>`` on stderr, one line, never wrapped."""
    err_console.print(Text.assemble(("error: ", "bold red"), one_line(message)), soft_wrap=True)


def print_note(label: str, message: object, style: str = "yellow") -> None:
    """``<label>: <message>`` on stderr (e.g. ``warning: ...``), printed literally and never wrapped."""
    err_console.print(Text.assemble((f"{label}: ", style), str(message)), soft_wrap=True)


def print_line(message: object, style: str = "") -> None:
    """A literal line on stdout, never wrapped (paths stay whole for copy and paste)."""
    console.print(Text(str(message), style=style), soft_wrap=True)


def fail(message: object) -> NoReturn:
    """Stop the command: one error line, exit 2."""
    print_error(message)
    raise typer.Exit(USER_ERROR_EXIT)


# -- logging ----------------------------------------------------------------------------------------------
class _ConsoleHandler(logging.Handler):
    """Log records as ``warning: message`` lines on the error console (markup off)."""

    STYLES = {"DEBUG": "dim", "INFO": "cyan", "WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red"}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            level = record.levelname
            label = Text(f"{level.lower()}: ", style=self.STYLES.get(level, ""))
            err_console.print(Text.assemble(label, text), soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(verbosity: int = 0) -> None:
    """Warnings always; ``-v``: psbench's info; ``-vv``: debug everywhere (third-party info too)."""
    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    # third-party libraries (open_clip logs "no pretrained weights" at INFO) stay at WARNING unless -vv
    logging.getLogger().setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)
    for name in ("psbench", "baselines"):
        logging.getLogger(name).setLevel(level)


# -- failures ---------------------------------------------------------------------------------------------
_interrupt_message: ContextVar[Callable[[], str] | None] = ContextVar("interrupt_message", default=None)


def on_interrupt(message: Callable[[], str]) -> None:
    """Set what Ctrl-C prints for the running command: what was kept and the command that continues."""
    _interrupt_message.set(message)


def _report_interrupt() -> None:
    make = _interrupt_message.get()
    try:
        detail = make() if make is not None else "nothing was kept"
    except Exception as exc:  # noqa: BLE001 - the message must not hide the interruption
        detail = f"(could not say what was kept: {exc})"
    err_console.print(Text.assemble(("interrupted: ", "bold yellow"), detail), soft_wrap=True)


def guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a typer command in the policy: consoles, logging by ``-v``, user errors, Ctrl-C.

    Adds a ``--verbose/-v`` option (counted) unless the command declares its own ``verbose``.
    """
    signature = inspect.signature(func, eval_str=True)  # typer reads the evaluated annotations
    own_verbose = "verbose" in signature.parameters

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbosity = int(kwargs.get("verbose", 0) if own_verbose else kwargs.pop("verbose", 0))
        refresh_consoles()
        setup_logging(verbosity)
        _interrupt_message.set(None)
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):  # typer's own signals (Exit is a RuntimeError)
            raise
        except KeyboardInterrupt:
            _report_interrupt()
            raise typer.Exit(INTERRUPT_EXIT) from None
        except USER_ERRORS as exc:
            log.debug("traceback of the error below", exc_info=True)
            fail(exc)

    if not own_verbose:
        params = list(signature.parameters.values())
        params.append(inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=0, annotation=Verbosity))
        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {**getattr(func, "__annotations__", {}), "verbose": Verbosity}
    return wrapper


class PolicyGroup(TyperGroup):
    """The root command group: click's usage errors become one ``error:`` line too (exit 2)."""

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except NoArgsIsHelpError as exc:  # a bare command: its help
            from typer import rich_utils

            rich_utils.rich_format_error(exc)
            sys.exit(exc.exit_code)
        except typer.TyperException as exc:  # click's errors (usage errors among them)
            refresh_consoles()
            hint = ""
            if isinstance(exc, UsageError) and exc.ctx is not None:
                hint = f" (see `{exc.ctx.command_path} --help`)"
            print_error(exc.format_message() + hint)
            sys.exit(exc.exit_code)
        except typer.Abort:
            print_error("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


# -- argument checks (run before any work starts) -----------------------------------------------------------
def check_output_dir(path: Path, option: str) -> Path:
    """``path`` may be created as a directory: it is a directory or does not exist (nor its parent as a file)."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "" if p == path else f" (its parent {p} is a file)"
                raise UserError(f"{option} {path}: exists and is not a directory{what}")
            break
    return path


def check_new_file(path: Path, option: str) -> Path:
    """``path`` can be written as a file: not a directory, and its folder is not a file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a directory; give a file name")
    check_output_dir(path.parent, f"{option} folder")
    return path


# -- shared command helpers --------------------------------------------------------------------------------
TRUST_HELP = (
    "Allow CLIP weights (e.g. OpenAI's original ViT-B-32.pt) or a run checkpoint that is a general pickle or a "
    "TorchScript archive. "
    "Unpickling such a file can execute arbitrary code: use only for files from a source you trust; plain "
    "state dicts and .safetensors never need it."
)


def command_line() -> str:
    """The command as the user typed it, for the run record and for "rerun this" hints."""
    return "psbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def progress_callback(task: Task) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that advances a progress task by the difference."""
    state = {"done": 0}

    def report(done: int, total: int) -> None:
        task.advance(done - state["done"])
        state["done"] = done

    return report


def interrupted_runs_message(run_dirs: list[Path], rerun: str = "") -> str:
    """What Ctrl-C kept of the runs started so far, and the exact commands that continue them."""
    unfinished = [d for d in run_dirs if not (d / "metrics.json").is_file()]
    finished = len(run_dirs) - len(unfinished)
    parts = [f"{finished} finished run(s) kept"] if finished else []
    for run_dir in unfinished:
        parts.append(
            f"unfinished run {run_dir} kept ({_checkpoint_state(run_dir)}); resume it with: "
            f"psbench run --resume {shlex.quote(str(run_dir))}"
        )
    if rerun:
        parts.append(f"then rerun `{rerun}` (finished runs are not redone)")
    return "; ".join(parts) if parts else "no run directory was created yet; nothing was kept"


def _checkpoint_state(run_dir: Path) -> str:
    try:
        if json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["config"]["train"]["epochs"] == 0:
            return "zero-shot: resume runs the evaluation again"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    epoch = None
    log_path = run_dir / "train_log.jsonl"
    if (run_dir / "checkpoint_last.pt").is_file() and log_path.is_file():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "epoch_summary" in record:
                epoch = record["epoch_summary"].get("epoch")
    if epoch is None:
        return "no finished epoch yet: resume restarts training from epoch 0"
    return f"last checkpoint after epoch {epoch}: resume continues from epoch {epoch + 1}"
