"""The encoder of a `features` modality: pre-extracted feature sequences (CMU-MOSEI's FACET / COVAREP / GloVe
streams, say) or vectors, projected to a width and optionally contextualised by a small transformer.

It is a `PreTrainedModel` with its own config, so it sits in the modality table like any AutoModel backbone (its
pooling, LoRA targets and width come from the backbone table) and saves and loads with the DMIL model.

This module is copied next to ``modeling_dmil.py`` when a model is saved with remote code, so it imports only torch
and transformers.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput


class DMILFeatureEncoderConfig(PretrainedConfig):
    r"""Config of [`DMILFeatureEncoder`].

    Args:
        feature_dim (`int`, defaults to 32): size of each input feature vector.
        hidden_size (`int`, defaults to 64): width of the encoder's output.
        num_hidden_layers (`int`, defaults to 0): transformer layers over the sequence; 0 is a projection alone
            (per-step features, pooled by the model).
        num_attention_heads (`int`, defaults to 4), intermediate_size (`int`, defaults to 128): sizes of those layers.
        max_position_embeddings (`int`, defaults to 512): longest sequence (learned positions, used with layers).
        hidden_dropout_prob (`float`, defaults to 0.1): dropout after the projection and inside the layers.

    Example:

    ```python
    >>> import torch
    >>> from dmil_hf.models.dmil.feature_encoder_dmil import DMILFeatureEncoder, DMILFeatureEncoderConfig
    >>> encoder = DMILFeatureEncoder(DMILFeatureEncoderConfig(feature_dim=5, hidden_size=8, num_hidden_layers=1,
    ...                                                      num_attention_heads=2, intermediate_size=16))
    >>> encoder(torch.randn(2, 7, 5)).last_hidden_state.shape
    torch.Size([2, 7, 8])
    ```
    """

    model_type = "dmil_feature_encoder"

    def __init__(
        self,
        feature_dim: int = 32,
        hidden_size: int = 64,
        num_hidden_layers: int = 0,
        num_attention_heads: int = 4,
        intermediate_size: int = 128,
        max_position_embeddings: int = 512,
        hidden_dropout_prob: float = 0.1,
        layer_norm_eps: float = 1e-5,
        **kwargs,
    ):
        for name, value in (("feature_dim", feature_dim), ("hidden_size", hidden_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DMILFeatureEncoderConfig.{name} must be a positive int, got {value!r}")
        if num_hidden_layers and hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({num_attention_heads})"
            )
        self.feature_dim = feature_dim
        self.hidden_size = hidden_size
        self.num_hidden_layers = int(num_hidden_layers)
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_dropout_prob = hidden_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        super().__init__(**kwargs)


class DMILFeatureEncoderLayer(nn.Module):
    """A pre-norm transformer layer: `x + attention(norm1(x))`, then `x + linear2(gelu(linear1(norm2(x))))`.

    The parameters have `nn.TransformerEncoderLayer(norm_first=True)`'s names (checkpoints written with that layer
    load unchanged) but not its eval-mode fast path, which reads `linear1.weight` and `linear2.weight` directly:
    LoRA adapters on `linear1` / `linear2` (the backbone table's targets) were skipped in eval without gradients.
    Here every Linear is called as a module, in every mode. The attention's projections stay inside
    `nn.MultiheadAttention`, which reads them as tensors, so LoRA cannot target them (`add_lora` refuses).
    """

    def __init__(self, config: DMILFeatureEncoderConfig):
        super().__init__()
        hidden, p = config.hidden_size, config.hidden_dropout_prob
        self.self_attn = nn.MultiheadAttention(hidden, config.num_attention_heads, dropout=p, batch_first=True)
        self.linear1 = nn.Linear(hidden, config.intermediate_size)
        self.dropout = nn.Dropout(p)
        self.linear2 = nn.Linear(config.intermediate_size, hidden)
        self.norm1 = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.norm2 = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout1 = nn.Dropout(p)
        self.dropout2 = nn.Dropout(p)

    def forward(self, hidden: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(hidden)
        attended = self.self_attn(x, x, x, key_padding_mask=padding, need_weights=False)[0]
        hidden = hidden + self.dropout1(attended)
        x = self.linear2(self.dropout(nn.functional.gelu(self.linear1(self.norm2(hidden)))))
        return hidden + self.dropout2(x)


class DMILFeatureEncoderStack(nn.Module):
    """`num_hidden_layers` `DMILFeatureEncoderLayer`s, under `layers` as `nn.TransformerEncoder` kept them."""

    def __init__(self, config: DMILFeatureEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(DMILFeatureEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden, padding)
        return hidden


class DMILFeatureEncoder(PreTrainedModel):
    """Linear projection + LayerNorm (+ learned positions and `num_hidden_layers` pre-norm transformer layers) over
    `input_features` `(batch, steps, feature_dim)`; a `(batch, feature_dim)` vector is a sequence of one step."""

    config_class = DMILFeatureEncoderConfig
    main_input_name = "input_features"
    base_model_prefix = "feature_encoder"

    def __init__(self, config: DMILFeatureEncoderConfig):
        super().__init__(config)
        self.projection = nn.Linear(config.feature_dim, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        if config.num_hidden_layers:
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
            self.layers = DMILFeatureEncoderStack(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.LayerNorm, nn.Embedding)):
            module.reset_parameters()
        elif isinstance(module, nn.MultiheadAttention):
            module._reset_parameters()

    def forward(
        self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutput:
        if input_features.dim() == 2:
            input_features = input_features.unsqueeze(1)
        hidden = self.dropout(self.layer_norm(self.projection(input_features)))
        if self.config.num_hidden_layers:
            steps = hidden.shape[1]
            if steps > self.config.max_position_embeddings:
                raise ValueError(
                    f"input_features has {steps} steps; this feature encoder takes at most "
                    f"{self.config.max_position_embeddings} (max_position_embeddings)"
                )
            hidden = hidden + self.position_embeddings(torch.arange(steps, device=hidden.device))
            padding = None
            if attention_mask is not None:
                padding = ~attention_mask.bool()
                # A row with every step masked (a placeholder for a missing sample) would attend to nothing: NaN.
                padding = padding & ~padding.all(dim=1, keepdim=True)
            hidden = self.layers(hidden, padding)
        return BaseModelOutput(last_hidden_state=hidden)


__all__ = ["DMILFeatureEncoder", "DMILFeatureEncoderConfig"]
