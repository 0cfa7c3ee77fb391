"""Prompt Switch: switch, aggregation, chunk locality, captioner, loss, parameter counts and groups.

Oracles: naive loops over frames/prompts, open_clip's own block forward, hand-computed weighted
cross-entropy, closed-form parameter counts of ViT-B/32 shapes.
"""

from __future__ import annotations

import inspect
import logging
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from psbench.backbone.clip import Tokenizer, blocks, create_clip, embed_frames, head
from psbench.catalog import METHOD_TABLE, create_method
from psbench.method import Batch
from psbench.promptswitch import (
    CaptionDecoder,
    PromptSwitch,
    block_forward,
    caption_target_mask,
    frequent_word_ids,
    switch_prompts,
)

logging.getLogger().setLevel(logging.ERROR)  # open_clip warns about missing weights

TINY_FRAMES = 32  # psbench-tiny image size


def tiny(seed: int = 0, **options) -> PromptSwitch:
    torch.manual_seed(seed)
    return PromptSwitch(create_clip("psbench-tiny"), **options).eval()


def frames(n: int, f: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, f, 3, TINY_FRAMES, TINY_FRAMES, generator=g)


def randomise_aggregation(model: PromptSwitch) -> None:
    with torch.no_grad():
        model.aggregation.attn.out_proj.weight.normal_(0, 0.2)
        model.aggregation.attn.out_proj.bias.normal_(0, 0.2)


# -- switch -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("npr", [3, 6])
def test_switch_moves_exactly_the_prompt_block_and_is_an_involution(npr: int) -> None:
    t, w, chunks = 5, 4, 2
    h = torch.randn(chunks * npr, t + npr, w)
    s = switch_prompts(h, t, npr)
    assert torch.equal(s[:, :t], h[:, :t])  # CLIP tokens untouched
    for c in range(chunks):
        for j in range(npr):
            for p in range(npr):
                assert torch.equal(s[c * npr + j, t + p], h[c * npr + p, t + j])
    assert torch.equal(switch_prompts(s, t, npr), h)


def test_switch_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="multiple of 3"):
        switch_prompts(torch.zeros(4, 8, 2), 5, 3)


def _layerscale_clip() -> torch.nn.Module:
    vision = {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "ls_init_value": 0.5}
    text = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}
    return open_clip.model.CLIP(embed_dim=64, vision_cfg=vision, text_cfg=text, quick_gelu=True)


def test_block_forward_matches_open_clip_block_with_layerscale() -> None:
    torch.manual_seed(0)
    clip = _layerscale_clip()
    block = blocks(clip.visual)[0]
    with torch.no_grad():
        block.ls_1.gamma.uniform_(0.1, 2.0)
        block.ls_2.gamma.uniform_(0.1, 2.0)
    npr, t = 3, 7
    x = torch.randn(2 * npr, t + npr, 64)
    # switch=False is exactly the block's own forward
    torch.testing.assert_close(block_forward(block, x, t, npr, switch=False), block(x))
    # a prompt block symmetric under the switch (slot (f, p) == slot (p, f)) is unchanged by it
    sym = x.clone()
    cube = sym[:, t:].reshape(2, npr, npr, 64)
    sym[:, t:] = (0.5 * (cube + cube.transpose(1, 2))).reshape(2 * npr, npr, 64)
    torch.testing.assert_close(block_forward(block, sym, t, npr, switch=True), block(sym))
    # and an asymmetric one is changed
    assert not torch.allclose(block_forward(block, x, t, npr, switch=True), block(x))


# -- encoder oracle -----------------------------------------------------------------------------------


def naive_frame_features(model: PromptSwitch, video: torch.Tensor) -> torch.Tensor:
    """Independent loop implementation of §6.2-6.4 for one video (F, 3, H, W) -> (F, D).

    Uses a single-head closed form for the aggregation (psbench-tiny width 64 -> 1 head).
    """
    visual, npr = model.clip.visual, model.num_prompts
    f = video.shape[0]
    feats = []
    for c in range(f // npr):
        xs = [embed_frames(visual, video[c * npr + j : c * npr + j + 1])[0] for j in range(npr)]  # (T, W)
        t = xs[0].shape[0]
        xs = [torch.cat([xs[j], model.prompt_embedding[j]], 0) for j in range(npr)]  # (T + np, W)
        for block in blocks(visual):
            hs = [block.ln_1(x) for x in xs]
            switched = []
            for j in range(npr):
                prompts = [hs[p][t + j] for p in range(npr)] if model.switch else [hs[j][t + p] for p in range(npr)]
                switched.append(torch.cat([hs[j][:t], torch.stack(prompts)], 0))
            new = []
            for j in range(npr):
                hj = switched[j].unsqueeze(0)
                x = xs[j] + block.ls_1(block.attn(hj, hj, hj, need_weights=False)[0][0])
                new.append(x + block.ls_2(block.mlp(block.ln_2(x))))
            xs = new
        for j in range(npr):
            cls = xs[j][0]  # (W,)
            if model.aggregation is not None:
                attn = model.aggregation.attn
                assert attn.num_heads == 1
                kv = torch.cat([x[t:] for x in xs], 0) if model.switch else xs[j][t:]  # (K, W)
                wq, wk, wv = attn.in_proj_weight.chunk(3)
                bq, bk, bv = attn.in_proj_bias.chunk(3)
                q, k, v = cls @ wq.T + bq, kv @ wk.T + bk, kv @ wv.T + bv
                a = torch.softmax(k @ q / math.sqrt(q.shape[0]), 0)  # (K,)
                cls = cls + attn.out_proj(a @ v)
            feats.append(head(visual, cls.unsqueeze(0))[0])
    return torch.stack(feats)


@pytest.mark.parametrize("options", [{}, {"switch": False}, {"aggregation": False}, {"num_prompts": 3}])
def test_frame_features_match_naive_loops(options: dict) -> None:
    model = tiny(**options, caption_loss=False)
    if model.aggregation is not None:
        randomise_aggregation(model)
    video = frames(2, 6)
    with torch.no_grad():
        got = model.encode_frames(video)  # (2, 6, D)
        for i in range(2):
            torch.testing.assert_close(got[i], naive_frame_features(model, video[i]), atol=1e-5, rtol=1e-4)


def test_zero_out_proj_gives_class_token_path_with_prompts() -> None:
    model = tiny(caption_loss=False)
    no_agg = tiny(aggregation=False, caption_loss=False)
    no_agg.load_state_dict(model.state_dict(), strict=False)
    assert torch.count_nonzero(model.aggregation.attn.out_proj.weight) == 0
    assert torch.count_nonzero(model.aggregation.attn.out_proj.bias) == 0
    video = frames(1, 6)
    with torch.no_grad():
        got = model.encode_frames(video)[0]
        torch.testing.assert_close(got, no_agg.encode_frames(video)[0], atol=1e-6, rtol=0)
        # without aggregation the naive class-token path (prompts present) is the oracle
        torch.testing.assert_close(got, naive_frame_features(no_agg, video[0]), atol=1e-5, rtol=1e-4)


# -- locality -----------------------------------------------------------------------------------------


def _changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().amax(-1) > 1e-4  # (N, F)


def test_frames_interact_only_within_their_chunk() -> None:
    model = tiny(caption_loss=False)
    randomise_aggregation(model)
    video = frames(2, 12)
    with torch.no_grad():
        base = model.encode_frames(video)
        edited = video.clone()
        edited[0, 1] += 1.0  # a frame of chunk 0 of video 0
        out = model.encode_frames(edited)
    changed = _changed(base, out)
    assert changed[0, :6].all()  # every frame of the same chunk moves (frame 0 included)
    assert not changed[0, 6:].any()  # the other chunk of the same video does not
    assert not changed[1].any()  # nor another video
    torch.testing.assert_close(out[0, 6:], base[0, 6:], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], base[1], atol=1e-6, rtol=0)


def test_without_switch_frames_are_independent() -> None:
    torch.manual_seed(0)
    model = create_method("promptswitch-noswitch", create_clip("psbench-tiny"), {"caption_loss": False}).eval()
    randomise_aggregation(model)
    video = frames(1, 6)
    with torch.no_grad():
        base = model.encode_frames(video)
        edited = video.clone()
        edited[0, 2] -= 1.0
        changed = _changed(base, model.encode_frames(edited))
    assert changed[0].tolist() == [False, False, True, False, False, False]


def test_frame_count_must_be_a_multiple_of_num_prompts() -> None:
    model = tiny(caption_loss=False)
    with pytest.raises(ValueError, match=r"got 8 frames .*num_prompts=6"):
        model.encode_video(frames(1, 8), torch.ones(1, 8, dtype=torch.bool))


def test_video_embedding_is_normalised_masked_mean_and_never_sees_text() -> None:
    assert list(inspect.signature(PromptSwitch.encode_video).parameters) == ["self", "frames", "mask"]
    model = tiny()
    video = frames(2, 12)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 9:] = False
    tok = Tokenizer(max_words=16, context_length=32)
    with torch.no_grad():
        first = model.encode_video(video, mask)["video"]
        model.encode_text(tok(["a red square moves left", "nothing"]))
        model.caption_loss(model.encode_frames(video), tok(["x", "y"]))
        second = model.encode_video(video, mask)["video"]
        feats = F.normalize(model.encode_frames(video), dim=-1)
    assert torch.equal(first, second)
    expected = torch.stack([feats[0].mean(0), feats[1, :9].mean(0)])
    torch.testing.assert_close(first, F.normalize(expected, dim=-1), atol=1e-6, rtol=1e-5)


# -- captioner ----------------------------------------------------------------------------------------


def test_caption_decoder_is_causal_and_head_copies_embedding() -> None:
    torch.manual_seed(0)
    emb = torch.randn(100, 64)
    dec = CaptionDecoder(emb, num_layers=2).eval()
    assert torch.equal(dec.head.weight, emb) and dec.head.weight.data_ptr() != emb.data_ptr()
    assert torch.count_nonzero(dec.head.bias) == 0
    x, mem = torch.randn(2, 9, 64), torch.randn(2, 6, 64)
    t = 4
    y = x.clone()
    y[:, t + 1] += 3.0
    with torch.no_grad():
        a, b = dec(x, mem), dec(y, mem)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, t + 1], b[:, t + 1])
    with torch.no_grad():
        c = dec(x, mem + 1.0)
    assert not torch.allclose(a[:, 0], c[:, 0])  # every position reads the video memory


def test_frequent_word_ids() -> None:
    tok = Tokenizer(max_words=8, context_length=8)
    ids = frequent_word_ids()
    words = [
        "in",
        "on",
        "of",
        "to",
        "about",
        "this",
        "that",
        "a",
        "an",
        "the",
        "and",
        "there",
        "here",
        "is",
        "are",
        ".",
        ",",
    ]
    expected = {tok.encode_words(w)[0] for w in words} | {tok.sot_id, tok.eot_id}
    assert all(len(tok.encode_words(w)) == 1 for w in words)
    assert set(ids) == expected and len(ids) == 19
    assert tok.encode_words("dog")[0] not in ids


def test_target_mask_matches_official_eos_padding_rule() -> None:
    tok = Tokenizer(max_words=10, context_length=12)
    ids = tok(["a dog runs", "! ! !", "the cat is on the mat and it is a big one"])  # (3, 12); '!' is id 0
    ids = torch.cat([ids, torch.full((1, 12), 320)], 0)  # a row without EOT
    ids[3, 0] = tok.sot_id
    # official: HF pads with EOS; keep positions whose input token is not EOS
    hf = ids.clone()
    for row in hf:
        eot = (row == tok.eot_id).nonzero()
        if len(eot):
            row[int(eot[0]) :] = tok.eot_id
    official = hf[:, :-1] != tok.eot_id
    assert torch.equal(caption_target_mask(ids, tok.eot_id), official)
    assert caption_target_mask(ids, tok.eot_id)[1].sum() == 4  # three '!' then EOT; padding zeros excluded


def test_caption_loss_equals_hand_computed_weighted_ce() -> None:
    model = tiny()
    with torch.no_grad():
        model.captioner.head.bias.normal_(0, 1.0)  # make the logits less uniform
    tok = Tokenizer(max_words=16, context_length=32)
    ids = tok(["a dog runs", "the red square is on the left ."])  # (2, 32)
    video = frames(2, 6)
    w = model.caption_weight
    assert w[tok.encode_words("a")[0]] == 0.25 and w[tok.eot_id] == 0.25 and w[tok.encode_words("dog")[0]] == 1.0
    with torch.no_grad():
        feats = model.encode_frames(video)  # (2, 6, D)
        embeds = model.clip.token_embedding(ids[:, :-1]) + model.clip.positional_embedding[:31]
        logits = model.captioner(embeds, feats)  # (2, 31, V)
        num = den = 0.0
        for b in range(2):
            words = ids[b].tolist()
            end = words.index(tok.eot_id)
            for t in range(end):  # predict words[t + 1] from position t, through the EOT
                target = words[t + 1]
                num += w[target] * -torch.log_softmax(logits[b, t], -1)[target]
                den += w[target]
        expected = 0.5 * num / den
        got = model.training_loss(Batch(video, torch.ones(2, 6, dtype=torch.bool), ids))["caption"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(0.5 * model.caption_loss(feats, ids), expected, atol=1e-5, rtol=1e-5)


def test_training_loss_one_vision_forward_and_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    import psbench.promptswitch.method as ps_method

    model = tiny().train()
    calls = []
    real = ps_method.embed_frames
    monkeypatch.setattr(ps_method, "embed_frames", lambda visual, px: calls.append(px.shape) or real(visual, px))
    tok = Tokenizer(max_words=16, context_length=32)
    batch = Batch(frames(3, 6), torch.ones(3, 6, dtype=torch.bool), tok(["a b", "c d e", "f"]))
    out = model.training_loss(batch)
    assert len(calls) == 1
    torch.testing.assert_close(out["loss"], out["contrastive"] + out["caption"])
    model.zero_grad()
    model.caption_loss(model.encode_frames(batch.frames), batch.tokens).backward()
    assert model.clip.token_embedding.weight.grad is None  # caption input embedded under no_grad
    assert model.prompt_embedding.grad.abs().sum() > 0  # the memory carries gradient into the encoder
    assert model.captioner.head.weight.grad.abs().sum() > 0


def test_nocap_variant_has_no_captioner() -> None:
    torch.manual_seed(0)
    model = create_method("promptswitch-nocap", create_clip("psbench-tiny"))
    assert model.captioner is None and not any(n.startswith("captioner") for n, _ in model.named_parameters())
    tok = Tokenizer(max_words=16, context_length=32)
    out = model.training_loss(Batch(frames(2, 6), torch.ones(2, 6, dtype=torch.bool), tok(["a", "b"])))
    assert set(out) == {"loss", "contrastive"}


# -- registry, options, groups ------------------------------------------------------------------------


def test_variants_are_registered_and_fix_their_option() -> None:
    for name, key, value in [
        ("promptswitch-noswitch", "switch", False),
        ("promptswitch-noagg", "aggregation", False),
        ("promptswitch-nocap", "caption_loss", False),
    ]:
        assert METHOD_TABLE[name].role == "ablation" and dict(METHOD_TABLE[name].fixed) == {key: value}
        torch.manual_seed(0)
        model = create_method(name, create_clip("psbench-tiny"), {"num_prompts": 3})
        assert model.num_prompts == 3
        assert model.extra_state()[key] is value
        with pytest.raises(ValueError, match=key):
            create_method(name, create_clip("psbench-tiny"), {key: True})
    assert tiny(caption_loss=False, aggregation=False).aggregation is None


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="param_groups='weird'"):
        tiny(param_groups="weird")
    with pytest.raises(ValueError, match="num_prompts"):
        tiny(num_prompts=0)


def test_prompt_init() -> None:
    model = tiny(num_prompts=12, caption_loss=False)
    assert model.prompt_embedding.shape == (12, 12, 64)
    std = float(model.prompt_embedding.detach().std())
    assert abs(std / (64**-0.5 * 0.02) - 1) < 0.05  # 9,216 samples
    assert float(tiny(prompt_init_std=0.02, caption_loss=False).prompt_embedding.detach().std()) > 0.015
    agg = model.aggregation.attn
    assert torch.count_nonzero(agg.in_proj_bias) == 0
    bound = math.sqrt(6 / (64 + 3 * 64))  # xavier-uniform on the (3W, W) in-projection
    weight = agg.in_proj_weight.detach()
    assert float(weight.abs().max()) <= bound and abs(float(weight.std()) / (bound / math.sqrt(3)) - 1) < 0.05


@pytest.mark.parametrize("mode", ["paper", "official"])
def test_parameter_groups_follow_option(mode: str) -> None:
    model = tiny(param_groups=mode)
    groups = {k: {n for n, _ in v} for k, v in model.parameter_groups().items()}
    agg = {n for n, _ in model.named_parameters() if n.startswith("aggregation.")}
    assert agg and agg <= groups["new" if mode == "paper" else "clip"]
    assert "prompt_embedding" in groups["new"]
    assert {n for n, _ in model.named_parameters() if n.startswith("captioner.")} <= groups["new"]
    assert {n for n in groups["clip"] if not n.startswith("clip.")} == (agg if mode == "official" else set())
    assert model.extra_state()["aggregation_lr_group"] == ("new" if mode == "paper" else "clip")
    assert any("10.4" in d for d in model.extra_state()["deviations"])


# -- ViT-B/32 shapes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit_b32() -> PromptSwitch:
    torch.manual_seed(0)
    return PromptSwitch(create_clip("ViT-B-32-quickgelu"))


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.slow  # builds the full ViT-B/32
def test_vit_b32_parameter_counts(vit_b32: PromptSwitch) -> None:
    m = vit_b32
    assert m.prompt_embedding.numel() == 6 * 6 * 768 == 27_648
    assert m.aggregation.attn.num_heads == 12
    assert _count(m.aggregation) == 4 * 768 * 768 + 4 * 768 == 2_362_368
    d, ff, v = 512, 2048, 49_408
    attn = 4 * d * d + 4 * d
    layer = 2 * attn + (d * ff + ff + ff * d + d) + 3 * 2 * d
    assert m.captioner.decoder.layers[0].self_attn.num_heads == 8
    assert _count(m.captioner.decoder) == 2 * layer + 2 * d  # + final LayerNorm: 8,409,088
    assert _count(m.captioner.prenorm) == 2 * d
    assert _count(m.captioner.head) == d * v + v == 25_346_304
    assert torch.equal(m.captioner.head.weight, m.clip.token_embedding.weight)
    assert abs(float(m.prompt_embedding.detach().std()) / (768**-0.5 * 0.02) - 1) < 0.05
