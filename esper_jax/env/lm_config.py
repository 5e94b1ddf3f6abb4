"""Static settings and sizes of the transformer (language-model) host (docs/environment.md#transformer-host).

``LMConfig`` is ``EnvConfig.lm``: where the tokens come from and how large the vocabulary is. The host's widths are
the task's (``TaskSpec``: ``slot_channels`` = the model width D, ``n_layer``, ``n_head``, ``block_size``); the
vocabulary defaults to the task's (``num_classes``: GPT-2's 50,257 on ``tinystories``, so the simulator keeps
upstream's 30,044,544-parameter host, and 256 on ``tinystories_small``) and follows the data where it is set (the
``tinystories`` preset sets 256 for the embedded byte corpus); the host's parameter count follows from both.

Parameter counts are upstream's modules counted exactly (torch ``nn.Linear`` with bias unless noted):

* host: token embedding V·D (tied with the LM head) + positions block·D + per layer (2 LayerNorms 4D, causal MHA
  4D² + 4D, 4× GELU MLP 8D² + 5D) + final LayerNorm 2D — 30,044,544 at V 50257, D 384, 6 layers, block 256;
* seeds (``transformer_blueprint_params``): norm 2D + 1, lora 2·D·8, lora_large 2·D·32, attention and
  flex_attention 4D² + 4D, mlp_small 4D² + 3D, mlp 8D² + 5D.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from esper_jax.contracts import BlueprintAction

BYTE_VOCAB = 256  # byte-level tokens of a text file or the embedded corpus
GPT2_VOCAB = 50_257
LORA_RANK = 8
LORA_LARGE_RANK = 32
SEED_ATTENTION_HEADS = 4  # upstream's attention / flex_attention seeds: 4 heads whatever the host has


def transformer_blueprint_params(blueprint: BlueprintAction, d: int) -> int:
    """Exact parameter count of a transformer seed at width ``d`` (0 for CNN blueprints and NOOP)."""
    attention = 4 * d * d + 4 * d  # qkv D→3D and proj D→D, both with bias
    counts = {
        BlueprintAction.NORM: 2 * d + 1,
        BlueprintAction.LORA: 2 * d * LORA_RANK,
        BlueprintAction.LORA_LARGE: 2 * d * LORA_LARGE_RANK,
        BlueprintAction.ATTENTION: attention,
        BlueprintAction.FLEX_ATTENTION: attention,
        BlueprintAction.MLP_SMALL: 4 * d * d + 3 * d,
        BlueprintAction.MLP: 8 * d * d + 5 * d,
    }
    return counts.get(BlueprintAction(blueprint), 0)


def transformer_host_params(d: int, n_layer: int, block_size: int, vocab_size: int) -> int:
    """Exact parameter count of upstream's ``TransformerHost`` (tied head: the embedding counts once)."""
    layer = 4 * d + (4 * d * d + 4 * d) + (8 * d * d + 5 * d)
    return vocab_size * d + block_size * d + n_layer * layer + 2 * d


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Tokens of the transformer host env (ignored by CNN tasks and by the simulator)."""

    data_path: str = ""
    """"" = the embedded corpus (procedural stories, byte tokens); else a text file (byte tokens), a token array
    ``.npy`` (1-D integers) or ``.bin`` (uint16, nanoGPT's format), or a directory holding nanoGPT's ``train.bin``
    and ``val.bin``."""
    vocab_size: int | None = None
    """Tokens the host embeds (None: the task's, 50257 on tinystories, 256 on tinystories_small); every token of
    the data must be below it (256 for bytes, 50257 for GPT-2 tokens)."""
    val_sequences: int = 16
    """Validation windows of block_size + 1 tokens, scored by every fused-validation row each step."""
    val_fraction: float = 0.1
    """Share of a single file's tokens held out (its tail) for validation."""
    max_train_tokens: int = 0
    """Keep only the first this many train tokens (0 = all). They are a constant of the compiled step, resident on
    the device: cap a large file (TinyStories' train.bin is about 470 M tokens) to what fits."""

    def __post_init__(self) -> None:
        if not isinstance(self.data_path, str):
            raise TypeError(f"LMConfig.data_path must be a str ('' = the embedded corpus), got {self.data_path!r}")
        for name, minimum in (("vocab_size", 2), ("val_sequences", 1), ("max_train_tokens", 0)):
            value = getattr(self, name)
            if name == "vocab_size" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"LMConfig.{name} must be an integer >= {minimum}, got {value!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"LMConfig.val_fraction must be in (0, 1), got {self.val_fraction!r}")

    def vocab(self, task_vocab: int) -> int:
        """``vocab_size``, or the task's vocabulary ``task_vocab`` when it is None."""
        return task_vocab if self.vocab_size is None else int(self.vocab_size)
