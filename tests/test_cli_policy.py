"""The CLI's one policy for messages, logging, progress and interruption (issue 12 items 1, 10, 11, 16)."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from psbench.cli import _common as policy
from psbench.cli import app
from psbench.progress import RichProgress
from tests.conftest import TINY_SETS


def _logging_app() -> typer.Typer:
    demo = typer.Typer(cls=policy.PolicyGroup)

    @demo.command()
    @policy.guarded
    def talk() -> None:
        log = logging.getLogger("psbench.test_cli_policy")
        log.warning("a warning line")
        log.info("an info line")
        log.debug("a debug line")

    @demo.command()
    @policy.guarded
    def other() -> None:
        pass

    return demo


@pytest.mark.parametrize(
    ("flags", "shown", "hidden"),
    [
        ([], ["warning: a warning line"], ["info line", "debug line"]),
        (["-v"], ["warning: a warning line", "info: an info line"], ["debug line"]),
        (["-vv"], ["warning: a warning line", "info: an info line", "debug: a debug line"], []),
    ],
)
def test_warnings_by_default_info_with_v_debug_with_vv(flags: list[str], shown: list[str], hidden: list[str]) -> None:
    result = CliRunner().invoke(_logging_app(), ["talk", *flags])
    assert result.exit_code == 0, result.output
    for text in shown:
        assert text in result.output
    for text in hidden:
        assert text not in result.output


def test_every_command_documents_v() -> None:
    for command in (["run"], ["eval"], ["bench"], ["data", "verify"], ["efficiency"], ["report"]):
        result = CliRunner().invoke(app, [*command, "--help"])
        assert result.exit_code == 0, result.output
        assert "info messages" in " ".join(result.output.split()), command


def _plain(stream: io.StringIO) -> Console:
    return Console(file=stream, force_terminal=False, width=200)


def test_plain_progress_stays_where_work_stopped() -> None:
    out = io.StringIO()
    progress = RichProgress(console=_plain(out))
    with pytest.raises(KeyboardInterrupt), progress, progress.task("train", total=50) as task:
        task.advance(39)
        raise KeyboardInterrupt
    last = out.getvalue().strip().splitlines()[-1]
    assert re.search(r"train: 39/50 \(78%\) \d+s stopped", last), last


def test_plain_progress_has_a_total_and_completes() -> None:
    out = io.StringIO()
    with RichProgress(console=_plain(out)) as progress, progress.task("encode", total=4) as task:
        for _ in range(4):
            task.advance()
    lines = out.getvalue().strip().splitlines()
    assert lines[0].startswith("encode: 0/4 (0%)")
    assert re.search(r"encode: 4/4 \(100%\) \d+s done", lines[-1])


def test_terminal_progress_bar_does_not_jump_to_total_on_failure() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    progress = RichProgress(console=console)
    with pytest.raises(RuntimeError), progress, progress.task("train", total=25) as task:
        task.advance(5)
        raise RuntimeError("failed at step 5")
    text = out.getvalue()
    assert "train (stopped at 5)" in text
    assert "25/25" not in text


def test_data_synth_bar_has_a_total(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psbench.data.synthetic as synthetic

    pairs = {"train": 2, "val": 1, "test": 1}
    generate = synthetic.generate_synthetic

    def small(out: Path, **kwargs: object) -> dict:
        return generate(out, n_train_pairs=2, n_val_pairs=1, n_test_pairs=1, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(synthetic, "DEFAULT_PAIRS", pairs)  # the total the command announces
    monkeypatch.setattr(synthetic, "generate_synthetic", small)
    result = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "s"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "write synthetic videos: 0/8 (0%)" in result.output
    assert re.search(r"write synthetic videos: 8/8 \(100%\) \d+s done", result.output)
    assert "/?" not in result.output


@pytest.mark.slow
def test_ctrl_c_in_training_says_what_was_kept_and_how_to_resume(
    tiny_synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread: None
) -> None:
    from baselines.meanpool import MeanPool

    original = MeanPool.encode_video
    calls = {"training": 0}

    def interrupt_at_step_6(self: MeanPool, frames, mask):  # type: ignore[no-untyped-def]
        if self.training:
            calls["training"] += 1
            if calls["training"] == 6:  # epoch 1 (of 2), after the epoch-0 checkpoint
                raise KeyboardInterrupt
        return original(self, frames, mask)

    monkeypatch.setattr(MeanPool, "encode_video", interrupt_at_step_6)
    sets = [f"{k}={v}" for k, v in {**TINY_SETS, "train.epochs": 2}.items()]
    args = ["run", "-m", "meanpool", "--data-root", str(tiny_synthetic), "--runs-dir", str(tmp_path)]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == policy.INTERRUPT_EXIT, result.output
    assert "Traceback" not in result.output
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    message = [line for line in result.output.splitlines() if line.startswith("interrupted: ")]
    assert message == [
        f"interrupted: unfinished run {run_dir} kept (last checkpoint after epoch 0: resume continues from "
        f"epoch 1); resume it with: psbench run --resume {run_dir}"
    ]
    stopped = [line for line in result.output.splitlines() if line.endswith(" stopped")]
    assert stopped and "8/8" not in stopped[0], result.output  # 2 epochs x 4 steps: stopped at step 5

    monkeypatch.setattr(MeanPool, "encode_video", original)
    monkeypatch.setenv("COLUMNS", "40")  # a narrow terminal: the run directory stays on one line
    resumed = CliRunner().invoke(app, ["run", "--resume", str(run_dir)])
    assert resumed.exit_code == 0, resumed.output
    assert (run_dir / "metrics.json").is_file()
    assert f"run directory: {run_dir}" in resumed.output.splitlines()


def test_version_prints_and_exits() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert version("psbench") in result.output


def test_seed_with_all_seeds_is_an_error() -> None:
    result = CliRunner().invoke(app, ["run", "-m", "meanpool", "--seed", "0", "--all-seeds"])
    assert result.exit_code == policy.USER_ERROR_EXIT
    assert "--seed 0 and --all-seeds contradict each other" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_workers_are_capped_by_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    from psbench.data import loader

    monkeypatch.setattr(loader, "available_cpus", lambda: 2)
    assert loader.usable_workers(8) == 2
    assert loader.usable_workers(1) == 1
    assert loader.usable_workers(loader.ALL_CPUS) == 2
    with pytest.raises(ValueError, match="num_workers must be >= 0 or -1"):
        loader.usable_workers(-2)


def test_every_missing_annotation_file_is_named_at_once(tmp_path: Path) -> None:
    from psbench.data.datasets import DATASETS
    from psbench.protocol import DataConfig

    with pytest.raises(FileNotFoundError) as info:
        DATASETS.get("msvd")(DataConfig(dataset="msvd"), tmp_path, "test")
    message = str(info.value)
    assert str(tmp_path / "captions_msvd.json") in message
    assert str(tmp_path / "test_list.txt") in message


def test_efficiency_and_evaluation_report_progress_with_totals(
    tiny_synthetic: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    """The long steps (efficiency points; encoding and scoring the test split) each have a bar with a total."""
    from psbench.efficiency import measure as eff

    out = io.StringIO()
    cfg = eff.EfficiencyConfig(
        methods=["meanpool"], arch="psbench-tiny", frames=4, queries=4, gallery=200, sweep=False, repeats=1
    )
    with RichProgress(console=_plain(out)) as progress:
        eff.run_efficiency(cfg, None, progress=progress)
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"efficiency: 0/(\d+) \(0%\) \d+s", lines[0]), lines
    total = lines[0].split("/")[1].split()[0]
    assert re.fullmatch(rf"efficiency: {total}/{total} \(100%\) \d+s( .*)? done", lines[-1]), lines

    sets = [a for k, v in {**TINY_SETS, "train.epochs": 0}.items() for a in ("--set", f"{k}={v}")]
    args = ["run", "-m", "meanpool", "--data-root", str(tiny_synthetic), "--runs-dir", str(tmp_path), *sets]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for step in ("encode test videos", "encode test captions", "score test captions x videos"):
        done = [line for line in result.output.splitlines() if line.startswith(f"{step}: ") and "done" in line]
        assert done and re.match(rf"{step}: (\d+)/\1 \(100%\)", done[0]), (step, result.output)
