"""Where the tests find the real annotation files: ``$PSBENCH_ANNOTATIONS``, else ``../shared/annotations``
beside the checkout. Nothing else is guessed; ``pytest``'s header says which folder is used and whether it exists."""

from __future__ import annotations

import os
from pathlib import Path

#: the checkout's root (tests/ lives directly under it)
REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_annotations() -> Path:
    """``$PSBENCH_ANNOTATIONS`` (the annotations folder itself, or a folder holding ``annotations/``),
    else ``../shared/annotations`` relative to the checkout."""
    configured = os.environ.get("PSBENCH_ANNOTATIONS", "")
    if configured:
        path = Path(configured).expanduser()
        return path / "annotations" if (path / "annotations").is_dir() else path
    return REPO_ROOT.parent / "shared" / "annotations"


#: the real annotation files (read in place, never copied into the project)
SHARED_ANNOTATIONS = shared_annotations()
