"""Published reference numbers of a protocol (its ``[[reference]]`` tables), never mixed with ours."""

from __future__ import annotations

import logging
from typing import Any

from psbench.protocol import ProtocolError, load_protocol
from psbench.registry import UnknownKeyError
from psbench.report.collect import Group

log = logging.getLogger(__name__)


def references_for(protocol: str, groups: list[Group]) -> tuple[list[dict[str, Any]], str]:
    """The protocol file's reference entries, else those recorded in the runs' config; and where they came from."""
    try:
        entries = list(load_protocol(protocol).get("reference", []))
        return entries, f"protocols/{protocol}.toml"
    except (UnknownKeyError, ProtocolError, OSError) as exc:
        log.info("protocol %s not loadable (%s); using the references recorded in its runs", protocol, exc)
    for group in groups:
        recorded = group.runs[0].config.get("config", {}).get("reference")
        if recorded:
            return list(recorded), f"recorded in {group.runs[0].path}/config.json"
    return [], ""


def reference_label(entry: dict[str, Any], footnote: int) -> str:
    """'published [N]: PAPER METHOD' (N numbers the source in the table notes) and our method's name."""
    name = entry.get("paper_method", entry.get("method"))
    ours = f"\n(ours: {entry['method']})" if entry.get("method") else ""
    return f"published [{footnote}]: {name}{ours}"
