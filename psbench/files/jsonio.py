"""Reading JSON files with errors that name the file, the line and the column."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class JsonFileError(ValueError):
    """A JSON file does not parse; the message names the file, line and column."""


def decode_error_message(path: str | Path, err: json.JSONDecodeError) -> str:
    """``PATH: invalid JSON: <reason> at line L column C``: the parser's sentence whole, with its position."""
    position = f"line {err.lineno} column {err.colno}"
    reason = f"{err.msg} {position}" if err.msg.endswith(" at") else f"{err.msg} at {position}"
    return f"{path}: invalid JSON: {reason}"


def read_json(path: str | Path) -> Any:
    """The parsed JSON of a UTF-8 file; :class:`JsonFileError` (a ValueError) if it does not parse."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise JsonFileError(decode_error_message(path, err)) from None
    except UnicodeDecodeError as err:
        raise JsonFileError(f"{path}: not valid UTF-8 text ({err.reason} at byte {err.start})") from None


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync (the training log survives a crash up to the last line)."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
