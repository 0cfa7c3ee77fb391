"""open_clip backbones: named architectures, local checkpoints and tiny test configs, one code path.

Real users pass ``arch="ViT-B-32-quickgelu"`` and the path of their own OpenAI CLIP weights; tests
and the synthetic protocol use ``psbench-tiny`` (``psbench/model_configs``), randomly initialised or
loaded from the checkpoint written by ``psbench data pretrain-clip``. Nothing is ever downloaded.

The helpers below expose the ViT stages (patch embedding, blocks, head) so that video methods can
change what happens between them without re-implementing CLIP.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer
from torch import Tensor, nn

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class BackboneError(RuntimeError):
    """A backbone could not be built or its weights could not be loaded."""


class WeightShapeError(BackboneError):
    """A weights tensor does not have the shape the architecture expects."""


#: positional embeddings open_clip would silently interpolate to the model's length
POS_EMBED_KEYS = ("positional_embedding", "text.positional_embedding", "visual.positional_embedding")
INTERPOLATE_HINT = "set backbone.interpolate_pos_embed = true in the protocol to interpolate it instead"


def _shape(t: Tensor) -> str:
    return "x".join(str(n) for n in t.shape) or "scalar"


class _NoRandomInitNotice(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly" warning: psbench never asks
    open_clip for weights; it loads the user's file itself right after (or runs randomly initialised on purpose)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def available_archs() -> list[str]:
    return sorted(open_clip.list_models())


def create_clip(
    arch: str,
    weights: str | Path | None = None,
    trust_checkpoint: bool = False,
    interpolate_pos_embed: bool = False,
    adjusted: list[str] | None = None,
) -> nn.Module:
    """Build an open_clip CLIP model by architecture name, optionally loading local weights.

    A weights tensor of the wrong shape is an error naming the key and both shapes; a positional
    embedding of another length is interpolated only with ``interpolate_pos_embed`` (logged at WARNING,
    and described in ``adjusted`` when a list is given, for the run record).

    ``weights`` is a local file: a state dict saved with ``torch.save`` (loaded with
    ``weights_only=True``) or a ``.safetensors`` file. A pickle or TorchScript archive (OpenAI's
    original ``ViT-B-32.pt``) loads only with ``trust_checkpoint=True`` (see ``psbench.backbone.checkpoint``).
    Without weights the model is randomly initialised (tests; the tiny model before pretraining).
    """
    from psbench.backbone.checkpoint import CheckpointFormatError, UntrustedCheckpointError, read_state_dict

    if arch not in open_clip.list_models():
        raise BackboneError(f"unknown backbone arch {arch!r}; valid: {', '.join(available_archs())}")
    notice = _NoRandomInitNotice()
    logging.getLogger().addFilter(notice)  # open_clip logs it on the root logger
    try:
        model = open_clip.create_model(arch, pretrained=None, load_weights=False)
    finally:
        logging.getLogger().removeFilter(notice)
    if weights is None:
        log.info("%s: randomly initialised (no weights file)", arch)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise BackboneError(f"CLIP weights not found: {path}")
        try:
            notes = load_state_into(model, read_state_dict(path, trust=trust_checkpoint), interpolate_pos_embed)
        except WeightShapeError as exc:
            raise WeightShapeError(f"CLIP weights {path} do not fit {arch}: {exc}") from None
        except UntrustedCheckpointError as exc:
            raise BackboneError(f"refusing to load CLIP weights: {exc}") from None
        except CheckpointFormatError as exc:  # the message names the file and the reason
            raise BackboneError(f"could not load CLIP weights: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - re-raised with the file name
            raise BackboneError(f"could not load CLIP weights from {path}: {exc}") from exc
        for note in notes:
            log.warning("CLIP weights %s: interpolated %s (backbone.interpolate_pos_embed)", path, note)
        if adjusted is not None:
            adjusted.extend(notes)
        log.info("loaded CLIP weights %s into %s", path, arch)
    return model


def load_state_into(model: nn.Module, state_dict: dict[str, Tensor], interpolate_pos_embed: bool = False) -> list[str]:
    """open_clip's layout conversion, a shape check of every tensor, then a strict load.

    A positional embedding of another length is interpolated only when ``interpolate_pos_embed``;
    otherwise, like any other tensor of the wrong shape, it raises :class:`WeightShapeError` naming the
    key and both shapes. Returns one line per interpolated embedding (empty when nothing was changed).
    """
    from open_clip.factory import (
        convert_state_dict,
        convert_to_custom_text_state_dict,
        resize_pos_embed,
        resize_text_pos_embed,
    )

    state_dict = convert_state_dict(model, dict(state_dict))
    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = convert_to_custom_text_state_dict(state_dict)
    for key in ("logit_scale", "logit_bias"):
        target = getattr(model, key, None)
        if key in state_dict and target is not None and target.ndim != state_dict[key].ndim:
            state_dict[key] = state_dict[key].reshape(target.shape)
    if "logit_bias" not in state_dict and getattr(model, "logit_bias", None) is not None:
        state_dict["logit_bias"] = torch.zeros_like(state_dict["logit_scale"])
    expected = model.state_dict()

    def mismatched(keys: Iterable[str]) -> list[str]:
        return [k for k in keys if k in state_dict and k in expected and state_dict[k].shape != expected[k].shape]

    notes = [f"{k} {_shape(state_dict[k])} -> {_shape(expected[k])}" for k in mismatched(POS_EMBED_KEYS)]
    if notes and interpolate_pos_embed:
        resize_pos_embed(state_dict, model)
        resize_text_pos_embed(state_dict, model)
    wrong = mismatched(state_dict)
    if wrong:
        key = wrong[0]
        more = f" (and {len(wrong) - 1} more: {', '.join(wrong[1:4])})" if len(wrong) > 1 else ""
        hint = f"; {INTERPOLATE_HINT}" if key in POS_EMBED_KEYS else ""
        raise WeightShapeError(
            f"{key} has shape {_shape(state_dict[key])}, the model expects {_shape(expected[key])}{more}{hint}"
        )
    model.load_state_dict(state_dict, strict=True)
    return notes


def save_clip(model: nn.Module, path: str | Path) -> None:
    """Save a CLIP model as an ordinary open_clip state-dict checkpoint (atomic)."""
    from psbench.files import atomic

    atomic.torch_save({"state_dict": model.state_dict()}, Path(path))


class Tokenizer:
    """open_clip's BPE tokenizer, truncated at ``max_words`` and padded to the model's context.

    Sequences are ``[SOT] + tokens + [EOT]`` with at most ``max_words`` ids in total, then zero
    padded to ``context_length`` (padding after EOT cannot change the causal EOT embedding).
    """

    def __init__(self, max_words: int, context_length: int) -> None:
        if max_words > context_length:
            raise ValueError(f"max_words={max_words} exceeds the text context length {context_length}")
        self.max_words, self.context_length = max_words, context_length
        self._bpe = SimpleTokenizer(bpe_path=str(tokenizer_vocab_path()), context_length=max_words)

    @property
    def vocab_size(self) -> int:
        return len(self._bpe.encoder)

    @property
    def sot_id(self) -> int:
        return self._bpe.sot_token_id

    @property
    def eot_id(self) -> int:
        return self._bpe.eot_token_id

    def encode_words(self, text: str) -> list[int]:
        """BPE ids of ``text`` without SOT/EOT."""
        return self._bpe.encode(text)

    def __call__(self, texts: list[str]) -> Tensor:
        ids = self._bpe(texts, context_length=self.max_words)  # (Q, max_words)
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        out[:, : self.max_words] = ids
        return out  # (Q, context_length)


def tokenizer_vocab_path() -> Path:
    """The BPE vocabulary file every psbench tokenizer reads (open_clip's bundled one); hashed into each run."""
    from open_clip.tokenizer import default_bpe

    return Path(default_bpe())


def tokenizer_for(model: nn.Module, max_words: int) -> Tokenizer:
    return Tokenizer(max_words=max_words, context_length=int(model.context_length))


# -- ViT stages -----------------------------------------------------------------------------------


def patch_tokens(visual: nn.Module, pixels: Tensor) -> Tensor:
    """Patch embedding + class token + positional embedding, *before* ln_pre.

    pixels (N, 3, H, W) -> (N, 1 + P, W).
    """
    x = visual.conv1(pixels)  # (N, W, g, g)
    x = x.flatten(2).transpose(1, 2)  # (N, P, W)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (N, 1, W)
    x = torch.cat([cls, x], dim=1)  # (N, 1 + P, W)
    return x + visual.positional_embedding.to(x.dtype)


def embed_frames(visual: nn.Module, pixels: Tensor) -> Tensor:
    """Tokens entering the first block: patch tokens after ``ln_pre``. (N, 3, H, W) -> (N, 1+P, W)."""
    return visual.ln_pre(patch_tokens(visual, pixels))


def blocks(visual: nn.Module) -> nn.ModuleList:
    """The residual attention blocks of the vision transformer (batch-first)."""
    if not getattr(visual.transformer, "batch_first", True):
        raise BackboneError("psbench expects a batch-first open_clip vision transformer")
    return visual.transformer.resblocks


def head(visual: nn.Module, cls_token: Tensor) -> Tensor:
    """ln_post + projection of the class token. (N, W) -> (N, D)."""
    x = visual.ln_post(cls_token)
    return x @ visual.proj if visual.proj is not None else x


def frame_features(visual: nn.Module, pixels: Tensor) -> Tensor:
    """Unmodified CLIP image features of single frames. (N, 3, H, W) -> (N, D)."""
    x = embed_frames(visual, pixels)  # (N, T, W)
    for block in blocks(visual):
        x = block(x)
    return head(visual, x[:, 0])
