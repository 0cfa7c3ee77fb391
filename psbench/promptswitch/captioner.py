"""Caption decoder and weighted caption loss (spec §6.6; training only, discarded at inference).

Memory: the un-normalised projected frame features (B, F, D). Input: the caption ids without their
last position, embedded by CLIP's token + positional embedding under ``no_grad`` and layer-normed
(``caption_prenorm``). A post-norm ReLU ``nn.TransformerDecoder`` (dropout 0) with a final LayerNorm
and a causal mask; the head is a Linear(D -> vocab) whose weight is *copied* (not tied) from the
token embedding, with zero bias.

Targets. The official code (HF tokenizer, padded with EOS) keeps target ``ids[t + 1]`` wherever the
input ``ids[t]`` is not EOS: every token after SOT up to and including the first EOS. Our tokenizer
pads with 0 after EOT and id 0 is a real BPE token ("!"), so the same set is selected by *position*:
input positions before the first EOT (all positions when a row has no EOT). Padding is never a target.

Loss: ``cross_entropy(logits, targets, weight=w) * caption_loss_mult`` where ``w`` is 1 except for the
BPE ids of a list of frequent words (and SOT/EOT), which get ``frequent_word_weight``. PyTorch's
weighted mean divides by the sum of the target weights.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psbench.backbone.clip import Tokenizer

FREQUENT_WORDS = "in on of to about this that a an the and there here is are . ,"


@lru_cache(maxsize=1)
def frequent_word_ids() -> tuple[int, ...]:
    """CLIP BPE ids of ``FREQUENT_WORDS`` plus ``<|endoftext|>`` and ``<|startoftext|>`` (sorted)."""
    tok = Tokenizer(max_words=2, context_length=2)
    ids = {i for word in FREQUENT_WORDS.split() for i in tok.encode_words(word)}
    return tuple(sorted(ids | {tok.eot_id, tok.sot_id}))


@lru_cache(maxsize=1)
def clip_special_ids() -> tuple[int, int, int]:
    """(vocabulary size, SOT id, EOT id) of CLIP's BPE tokenizer."""
    tok = Tokenizer(max_words=2, context_length=2)
    return tok.vocab_size, tok.sot_id, tok.eot_id


def caption_class_weights(vocab_size: int, frequent_word_weight: float) -> Tensor:
    """(V,) class weights: 1 everywhere, ``frequent_word_weight`` at the frequent-word ids."""
    bpe_vocab = clip_special_ids()[0]
    if vocab_size != bpe_vocab:
        raise ValueError(
            f"the caption loss needs CLIP's BPE vocabulary ({bpe_vocab} tokens) but the model's token "
            f"embedding has {vocab_size} entries"
        )
    weight = torch.ones(vocab_size)
    weight[list(frequent_word_ids())] = frequent_word_weight
    return weight


def caption_target_mask(ids: Tensor, eot_id: int) -> Tensor:
    """(B, L) ids -> (B, L-1) bool: input positions whose next token is a caption target.

    Position t is kept iff t comes before the row's first EOT (so targets run from the first word
    through the first EOT); a row without EOT keeps every position.
    """
    length = ids.shape[1] - 1
    is_eot = ids == eot_id  # (B, L)
    first = torch.where(is_eot.any(1), is_eot.int().argmax(1), torch.full_like(ids[:, 0], length))  # (B,)
    positions = torch.arange(length, device=ids.device)  # (L-1,)
    return positions.unsqueeze(0) < first.unsqueeze(1)  # (B, L-1)


class CaptionDecoder(nn.Module):
    """Prenorm + transformer decoder + final LayerNorm + vocabulary head."""

    def __init__(self, token_embedding: Tensor, num_layers: int) -> None:
        """token_embedding: (V, D) CLIP token-embedding matrix; the head's weight starts as a copy."""
        super().__init__()
        vocab, dim = token_embedding.shape
        self.prenorm = nn.LayerNorm(dim)
        layer = nn.TransformerDecoderLayer(
            dim,
            max(1, dim // 64),
            dim_feedforward=4 * dim,
            dropout=0.0,
            activation="relu",
            batch_first=True,
            norm_first=False,
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers, norm=nn.LayerNorm(dim))
        self.head = nn.Linear(dim, vocab)
        with torch.no_grad():
            self.head.weight.copy_(token_embedding.detach())
            self.head.bias.zero_()

    def hidden(self, embeds: Tensor, memory: Tensor) -> Tensor:
        """embeds (B, L, D) input token embeddings, memory (B, F, D) -> (B, L, D) decoder states."""
        length = embeds.shape[1]
        causal = torch.triu(torch.full((length, length), float("-inf"), device=embeds.device), 1)  # (L, L)
        return self.decoder(self.prenorm(embeds), memory, tgt_mask=causal.to(embeds.dtype))  # (B, L, D)

    def forward(self, embeds: Tensor, memory: Tensor) -> Tensor:
        """embeds (B, L, D), memory (B, F, D) -> logits (B, L, V)."""
        return self.head(self.hidden(embeds, memory))  # (B, L, V)


def weighted_caption_loss(
    decoder: CaptionDecoder, embeds: Tensor, memory: Tensor, ids: Tensor, weight: Tensor, eot_id: int
) -> Tensor:
    """Weighted CE of the next-token predictions at the target positions (spec §6.6), unscaled.

    embeds (B, L-1, D) embeddings of ``ids[:, :-1]``; memory (B, F, D); ids (B, L); weight (V,).
    The head runs only on the target positions (same loss as masking full logits, far less memory).
    """
    mask = caption_target_mask(ids, eot_id)  # (B, L-1)
    states = decoder.hidden(embeds, memory)[mask]  # (M, D)
    logits = decoder.head(states)  # (M, V)
    return F.cross_entropy(logits, ids[:, 1:][mask], weight=weight.to(logits.dtype))
