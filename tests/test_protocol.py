"""Protocols: unknown keys rejected by name, overrides, hashes."""

from pathlib import Path

import pytest

from psbench.protocol import ProtocolError, list_protocols, load_protocol, parse_set, resolve
from psbench.registry import UnknownKeyError


def test_synthetic_protocol_resolves():
    p = load_protocol("synthetic")
    cfg = resolve(p, "meanpool")
    assert cfg.seed == p["seeds"][0] and len(p["seeds"]) >= 3
    assert cfg.backbone.arch == "psbench-tiny"
    assert cfg.test.frames == 12


def test_method_family_overrides_apply_to_variants():
    p = load_protocol("synthetic")
    assert resolve(p, "promptswitch").test.sampler == "chunked_interleave"
    assert resolve(p, "promptswitch-noswitch").test.sampler == "chunked_interleave"
    assert resolve(p, "meanpool").test.sampler == "uniform"


def test_unknown_protocol_key_is_rejected_by_name(tmp_path: Path):
    text = Path("protocols/synthetic.toml").read_text().replace("[train]\n", "[train]\nlearning_rat = 3\n")
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ProtocolError, match="learning_rat"):
        resolve(load_protocol(bad), "meanpool")


def test_unknown_top_level_key_is_rejected(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("mystery = 1\n" + Path("protocols/synthetic.toml").read_text())
    with pytest.raises(ProtocolError, match="mystery"):
        load_protocol(bad)


def test_set_overrides_and_type_checks():
    p = load_protocol("synthetic")
    cfg = resolve(
        p, "promptswitch", sets=parse_set(["train.epochs=0", "options.num_prompts=3", "test.sampler=uniform"])
    )
    assert cfg.train.epochs == 0 and cfg.options == {"num_prompts": 3} and cfg.test.sampler == "uniform"
    with pytest.raises(ProtocolError, match="train.epochs"):
        resolve(p, "meanpool", sets=parse_set(["train.epochs=many"]))
    with pytest.raises(ProtocolError, match="nonsense"):
        resolve(p, "meanpool", sets=parse_set(["nonsense.key=1"]))


def test_unknown_protocol_name_lists_valid_ones():
    with pytest.raises(UnknownKeyError) as info:
        load_protocol("no-such-protocol")
    assert "synthetic" in str(info.value) and "no-such-protocol" in str(info.value)
    assert "synthetic" in list_protocols()


def test_protocol_hash_ignores_seed_but_not_settings():
    p = load_protocol("synthetic")
    a, b = resolve(p, "meanpool", seed=0), resolve(p, "meanpool", seed=1)
    assert a.protocol_hash() == b.protocol_hash()
    c = resolve(p, "meanpool", sets={"train.epochs": 1})
    assert c.protocol_hash() != a.protocol_hash()
    assert resolve(p, "xpool").protocol_hash() != a.protocol_hash()
