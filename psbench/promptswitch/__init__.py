"""Prompt Switch (ICCV 2023): prompt cube + switch, aggregation, caption decoder, and its ablations.

The method and its three ablations are catalogued in ``psbench.catalog`` (the ablations fix one
option each: ``switch``, ``aggregation`` or ``caption_loss``).
"""

from psbench.promptswitch.aggregation import PromptAggregation, aggregation_heads
from psbench.promptswitch.captioner import (
    CaptionDecoder,
    caption_class_weights,
    caption_target_mask,
    frequent_word_ids,
    weighted_caption_loss,
)
from psbench.promptswitch.method import PromptSwitch
from psbench.promptswitch.switch import block_forward, switch_prompts

__all__ = [
    "CaptionDecoder",
    "PromptAggregation",
    "PromptSwitch",
    "aggregation_heads",
    "block_forward",
    "caption_class_weights",
    "caption_target_mask",
    "frequent_word_ids",
    "switch_prompts",
    "weighted_caption_loss",
]
