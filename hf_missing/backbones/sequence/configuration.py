"""Configuration of the sequence backbone (:mod:`hf_missing.backbones.sequence`)."""

from __future__ import annotations

from typing import Any

from transformers import BertConfig, PretrainedConfig

from ..frames import check_feature_modalities, check_frame_limit, check_positive_int, ordered_modalities

MODEL_TYPE = "hf_missing_sequence"
DEFAULT_MAX_FRAMES = 64
ACTIVATIONS = ("gelu", "relu", "gelu_new", "silu")
MAX_KERNEL_SIZE = 31
# Bounds on the sizes config.json sets (it is untrusted; the weights' size is checked against it on load too).
SIZE_LIMITS = {"hidden_size": 8192, "num_hidden_layers": 512, "num_attention_heads": 256, "intermediate_size": 32768}


class SequenceConfig(PretrainedConfig):
    """Configuration of :class:`~hf_missing.backbones.sequence.SequenceModel`: a joint-stream transformer over
    K precomputed feature sequences (MOSI / MOSEI / CH-SIMS: text, audio and vision frames).

    Pure data: checked here, built by the model. Every size comes from ``config.json`` (untrusted), so each is a
    bounded int.

    Args:
        feature_modalities: modality name -> frame width, in ``missing_type`` order (at least two), e.g.
            ``{"text": 768, "audio": 74, "vision": 35}``; modality ``m`` reads ``m_features [B, T, F]`` and
            ``m_mask [B, T]``.
        modality_order: the order of ``feature_modalities`` (default: the dict's own). ``config.json`` is written with
            sorted keys, so the order is stored here, and a loaded config restores it.
        max_feature_frames: the most frames a sequence may hold (its position embeddings): one int for every
            modality, or name -> int for each.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act, hidden_dropout_prob,
        attention_probs_dropout_prob, layer_norm_eps, initializer_range: the BERT layers of the joint stream.
        conv_kernel_size: frames each temporal convolution projection spans (odd; 1 = a per-frame linear map).
    """

    model_type = MODEL_TYPE

    feature_modalities: dict | None = None
    modality_order: list | None = None
    max_feature_frames: dict | int = DEFAULT_MAX_FRAMES
    hidden_size: int = 128
    num_hidden_layers: int = 6  # every method's default depth (MAP, REP: 6 layers) fits
    num_attention_heads: int = 4
    intermediate_size: int = 512
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    conv_kernel_size: int = 3

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.feature_modalities = check_feature_modalities(self.feature_modalities, "feature_modalities")
        if len(self.feature_modalities) < 2:
            raise ValueError(f"feature_modalities must name at least two modalities (a missing-modality backbone "
                             f"needs one to remain), got {list(self.feature_modalities)}; e.g. "
                             "{'text': 768, 'audio': 74, 'vision': 35}.")
        self.feature_modalities = ordered_modalities(self.feature_modalities, self.modality_order)
        self.modality_order = list(self.feature_modalities)
        self.max_feature_frames = self._frame_limits(self.max_feature_frames)
        self._check_sizes()

    def _frame_limits(self, value: Any) -> dict[str, int]:
        if not isinstance(value, dict):
            return {name: check_frame_limit(value, "max_feature_frames") for name in self.feature_modalities}
        if set(value) != set(self.feature_modalities):
            raise ValueError(f"max_feature_frames names {sorted(value)}, but feature_modalities names "
                             f"{sorted(self.feature_modalities)}; give one int for all, or one per modality.")
        return {name: check_frame_limit(value[name], f"max_feature_frames[{name!r}]")
                for name in self.feature_modalities}

    def _check_sizes(self) -> None:
        for field, limit in SIZE_LIMITS.items():
            check_positive_int(getattr(self, field), field, limit, "a size of the joint stream's BERT layers")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                             f"({self.num_attention_heads}).")
        kernel = self.conv_kernel_size
        if not (isinstance(kernel, int) and not isinstance(kernel, bool) and 1 <= kernel <= MAX_KERNEL_SIZE
                and kernel % 2):
            raise ValueError(f"conv_kernel_size must be an odd int in [1, {MAX_KERNEL_SIZE}] (frames each temporal "
                             f"convolution spans, centred), got {kernel!r}.")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {list(ACTIVATIONS)}, got {self.hidden_act!r}.")
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise ValueError(f"{field} must lie in [0, 1), got {getattr(self, field)!r}.")

    def encoder_config(self) -> BertConfig:
        """The BERT config of the joint stream's layers (no vocabulary: the tokens come from the frames)."""
        config = BertConfig(vocab_size=1, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                            num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
                            hidden_act=self.hidden_act, hidden_dropout_prob=self.hidden_dropout_prob,
                            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
                            layer_norm_eps=self.layer_norm_eps, initializer_range=self.initializer_range)
        config._attn_implementation = self._attn_implementation
        return config
