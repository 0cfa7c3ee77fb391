"""Which machine produced a run, and how the same protocol's numbers move from one machine to another.

Floating-point results depend on the CPU (or GPU) and on the kernels torch, MKL and oneDNN pick for it:
the summation order of a product differs, training trajectories drift apart, and a rerun of the same
protocol with the same seeds on another machine gives other numbers within the seed spread. Same-machine
determinism holds; cross-machine equality does not. This module names the machine behind every figure
(from each run's ``environment.json``) and builds the report's cross-machine table from a second set of runs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from psbench.report.collect import Group, Run, group_runs
from psbench.report.document import Paragraph, Row, Table
from psbench.report.tables import fmt, signed

#: (direction, metric) pairs compared across machines
CROSS_MACHINE_METRICS = (("t2v", "R1"), ("t2v", "R10"), ("v2t", "R1"))


def machine_label(env: dict[str, Any]) -> str:
    """``<device name> · kernels <capability>[, VAR=value ...]``, or "unknown machine" for old records."""
    name = str(env.get("device_name") or env.get("device") or "unknown machine")
    kernels = env.get("cpu_kernels") or {}
    if str(env.get("device", "cpu")).startswith("cuda"):
        return name
    parts = [f"torch CPU kernels {kernels['aten']}"] if kernels.get("aten") else []
    parts += [f"{k}={v}" for k, v in (kernels.get("overrides") or {}).items()]
    return f"{name} · {', '.join(parts)}" if parts else name


def machines_of(runs: Iterable[Run]) -> dict[str, int]:
    """Run count per machine label, most runs first."""
    counts: dict[str, int] = defaultdict(int)
    for run in runs:
        counts[machine_label(run.environment)] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def machines_paragraph(protocol: str, runs: list[Run]) -> Paragraph:
    """A sentence naming the machine(s) behind a protocol's numbers, and what another machine changes."""
    counts = machines_of(runs)
    named = "; ".join(f"{label} ({n} run{'s' * (n != 1)})" for label, n in counts.items())
    return Paragraph(
        f"{protocol}: the numbers of this section were produced on {named}. Another CPU or GPU (or other "
        "kernels on the same CPU) sums products in another order, so training takes another trajectory and "
        "the same seeds give different numbers, expected within the seed spread; the same machine reproduces "
        "them exactly."
    )


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _cell(values: list[float]) -> str:
    mean, std = _mean_std(values)
    return fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std)}"


def _row_key(group: Group) -> tuple[str, bool, str]:
    return (group.method, group.zero_shot, group.variant)


def _values(group: Group, direction: str, metric: str) -> list[float]:
    return [float(v) for v in group.metric_values(direction, metric)]


def cross_machine_table(protocol: str, primary: list[Group], other_runs: list[Run]) -> Table | None:
    """Per row: the metric on this report's machine, on the other machine, and the difference.

    A row of the other machine is matched to a primary row with the same method, kind and variant and the
    same protocol and test-data hashes (the same experiment); unmatched rows are left out and counted in a note.
    """
    other_groups, _, _ = group_runs([r for r in other_runs if r.protocol == protocol])
    by_key = {(_row_key(g), g.protocol_hash, g.test_data_hash): g for g in other_groups}
    primary_label = ", ".join(machines_of(r for g in primary for r in g.runs))
    other_label = ", ".join(machines_of(r for g in other_groups for r in g.runs))
    rows, unmatched = [], 0
    for group in primary:
        twin = by_key.get((_row_key(group), group.protocol_hash, group.test_data_hash))
        if twin is None:
            unmatched += 1
            continue
        cells = [group.cell_label, group.kind, f"{len(group.runs)} / {len(twin.runs)}"]
        for direction, metric in CROSS_MACHINE_METRICS:
            mine, theirs = _values(group, direction, metric), _values(twin, direction, metric)
            delta = _mean_std(theirs)[0] - _mean_std(mine)[0]
            cells.append(f"{_cell(mine)}\n{_cell(theirs)}\n{signed(delta)}")
        rows.append(Row(cells))
    if not rows:
        return None
    notes = [
        f"Each cell: mean ± std over seeds on A = {primary_label}; on B = {other_label}; then B − A. "
        "Both sets of runs share the protocol and test-data hashes and the seeds: only the machine differs."
    ]
    notes.extend(_ablation_signs(primary, by_key))
    if unmatched:
        notes.append(f"{unmatched} row(s) of this report have no counterpart on machine B and are left out.")
    columns = ["method", "kind", "seeds\nA / B"] + [
        f"{d} {m.replace('R', 'R@')} (%)\nA / B / B − A" for d, m in CROSS_MACHINE_METRICS
    ]
    return Table(f"{protocol}: the same runs on another machine", columns, rows, notes, ["l", "l", "r", "r", "r", "r"])


def _ablation_signs(primary: list[Group], other: dict[tuple[Any, ...], Group]) -> list[str]:
    """Per Prompt Switch ablation: full minus ablation (t2v R@1) on each machine, and whether the sign holds."""
    full = [g for g in primary if g.method == "promptswitch" and not g.zero_shot and not g.variant]
    if not full:
        return []
    full_b = other.get((_row_key(full[0]), full[0].protocol_hash, full[0].test_data_hash))
    notes = []
    for group in primary:
        if not group.method.startswith("promptswitch-") or group.zero_shot or group.variant or full_b is None:
            continue
        twin = other.get((_row_key(group), group.protocol_hash, group.test_data_hash))
        if twin is None:
            continue
        a = _mean_std(_values(full[0], "t2v", "R1"))[0] - _mean_std(_values(group, "t2v", "R1"))[0]
        b = _mean_std(_values(full_b, "t2v", "R1"))[0] - _mean_std(_values(twin, "t2v", "R1"))[0]
        verdict = "same sign" if a * b > 0 else "the sign differs between machines"
        notes.append(f"promptswitch − {group.method}, t2v R@1: A {signed(a)}, B {signed(b)} ({verdict}).")
    return notes
