"""The fused (MiniLM + EfficientNet-Lite0) backbone: tiny random configs (fast) and the real encoders (slow)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, BertTokenizerFast

import hf_missing
from hf_missing import MissingModalityCollator, MissingModalityForClassification
from hf_missing.backbones import FusedBackbone, FusedConfig, FusedModel, FusedProcessor, tiny
from hf_missing.backbones.fused import (
    FEATURES_FILE,
    FeatureCache,
    Stage1Settings,
    align_fused_backbone,
    build_fused_backbone,
    image_processor,
)
from hf_missing.context import ForwardContext
from hf_missing.data.synthetic import CLASSES, FILLER, IMAGE_SIZE, SPECIAL


def tiny_tokenizer() -> BertTokenizerFast:
    """A word-level BERT tokenizer over the shapes data's words (an in-memory vocabulary)."""
    words = sorted({w for c in CLASSES for w in c.split()} | set(FILLER))
    return BertTokenizerFast(vocab={w: i for i, w in enumerate([*SPECIAL, *words])}, do_lower_case=True)


def tiny_config() -> FusedConfig:
    tokenizer = tiny_tokenizer()
    return FusedConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, initializer_range=0.2),
        image_encoder="tiny_conv", image_size=IMAGE_SIZE, image_feature_dim=24, image_stride=10,
        cls_token_id=tokenizer.cls_token_id,
    )


def tiny_processor() -> FusedProcessor:
    return FusedProcessor(tiny_tokenizer(), image_processor(IMAGE_SIZE))


def tiny_wrapper(method: str | None = None) -> MissingModalityForClassification:
    model = MissingModalityForClassification.from_backbone(AutoModel.from_config(tiny_config()), num_labels=4)
    if method:
        model.add_adapter(hf_missing.get_method_config(method))
    return model


def batch(dataset, processor: FusedProcessor, n: int = 8, policy: str = "dummy") -> dict:
    return MissingModalityCollator(processor, policy=policy)([dataset[i] for i in range(n)])


def test_auto_classes_and_shapes() -> None:
    model = AutoModel.from_config(tiny_config())
    assert isinstance(model, FusedModel) and model.config.num_image_tokens == 9
    out = model(torch.randint(0, 20, (2, 5)), torch.ones(2, 5, dtype=torch.long), torch.randn(2, 3, 30, 30))
    assert out.last_hidden_state.shape == (2, 5 + 9, 32)
    assert out.pooler_output.shape == (2, 64)
    assert FusedBackbone(model).pooled_size == 64


@pytest.mark.parametrize("method", [None, "baseline", "map"])
def test_forward_backward_with_collator(shapes_missing, method: str | None) -> None:
    model = tiny_wrapper(method)
    out = model(**batch(shapes_missing["train"], tiny_processor()))
    assert out.logits.shape == (8, 4) and torch.isfinite(out.loss)
    out.loss.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and any(p.grad is not None for p in trained)
    assert not any(p.requires_grad for p in model.backbone.embeddings.parameters())


def test_spans_and_layers() -> None:
    interface = FusedBackbone(AutoModel.from_config(tiny_config()))
    (stream,) = interface.streams
    assert (stream.name, stream.modalities, stream.num_layers) == ("joint", ("text", "image"), 2)
    assert len(interface.layers("joint")) == 2
    ctx = ForwardContext(missing_type=torch.zeros(2, dtype=torch.long), present=torch.ones(2, 2, dtype=torch.bool),
                         modalities=("text", "image"))
    inputs = {"input_ids": torch.randint(0, 20, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long),
              "pixel_values": torch.randn(2, 3, 30, 30)}
    assert interface.encode(inputs, ctx).shape == (2, 64)
    assert ctx.spans == {"joint": {"text": slice(0, 6), "image": slice(6, 15)}}


def test_feature_modality_tokens_follow_the_image() -> None:
    """Catches a joint stream that drops or misplaces a feature modality: audio frames become tokens after the
    image's, padded frames are masked out of the audio mean, and the pooled output holds one mean per modality."""
    from hf_missing.backbones.tiny import tiny_backbone

    model = tiny_backbone("fused_audio").eval()
    interface = FusedBackbone(model)
    assert interface.modalities == ("text", "image", "audio") and interface.pooled_size == 96
    ctx = ForwardContext(missing_type=torch.zeros(2, dtype=torch.long), present=torch.ones(2, 3, dtype=torch.bool),
                         modalities=interface.modalities)
    audio = torch.randn(2, 5, 8)
    inputs = {"input_ids": torch.randint(0, 20, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long),
              "pixel_values": torch.randn(2, 3, 30, 30), "audio_features": audio,
              "audio_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])}
    with torch.no_grad():
        pooled = interface.encode(inputs, ctx)
        shorter = interface.encode({**inputs, "audio_features": audio[:, :3], "audio_mask": torch.ones(2, 3)}, ctx)
    assert ctx.spans["joint"]["audio"] == slice(15, 18)
    torch.testing.assert_close(pooled[0], shorter[0], atol=1e-5, rtol=1e-4)  # padding frames change nothing
    assert not torch.allclose(pooled[1, 64:], shorter[1, 64:])


def test_saved_config_keeps_the_feature_modality_order(tmp_path) -> None:
    """Catches feature modalities taken in ``config.json``'s order, which transformers writes with sorted keys: a
    fused backbone with (vision, audio) frames reloaded as (audio, vision), silently swapping their spans, codes
    and an adapter's per-modality tensors."""
    from transformers import AutoConfig

    from hf_missing.backbones.tiny import tiny_fused_config

    tiny_fused_config({"vision": 6, "audio": 8}).save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert list(loaded.feature_modalities) == ["vision", "audio"] == loaded.modality_order
    assert FusedBackbone(AutoModel.from_config(loaded)).modalities == ("text", "image", "vision", "audio")


@pytest.mark.parametrize("policy", ["mask", "zero"])
def test_policies_change_only_incomplete_samples(shapes_missing, policy: str) -> None:
    model = tiny_wrapper().eval()
    inputs = batch(shapes_missing["test"], tiny_processor(), n=16, policy=policy)
    incomplete = inputs["missing_type"] != 0
    assert incomplete.any() and (~incomplete).any()
    with torch.no_grad():
        applied = model(**inputs).logits
        dummy = model(**{**inputs, "missing_policy": "dummy"}).logits
    torch.testing.assert_close(applied[~incomplete], dummy[~incomplete])
    assert not torch.allclose(applied[incomplete], dummy[incomplete])


def test_kv_prefix_extends_attention() -> None:
    model = AutoModel.from_config(tiny_config()).eval()
    interface = FusedBackbone(model)
    interface.enable_kv_prefix()
    args = (torch.randint(0, 20, (2, 5)), torch.ones(2, 5, dtype=torch.long), torch.randn(2, 3, 30, 30))
    with torch.no_grad():
        plain = model(*args).pooler_output
        layer = interface.layers("joint")[0]
        prefix = torch.randn(2, 3, 32)
        with interface.kv_prefix(layer, "joint", prefix, prefix):
            prefixed = model(*args).pooler_output
        after = model(*args).pooler_output
    assert not torch.allclose(plain, prefixed)
    torch.testing.assert_close(plain, after)


def test_pretrained_token_embedding() -> None:
    model = AutoModel.from_config(tiny_config())
    interface = FusedBackbone(model)
    text, image = interface.pretrained_token_embedding("text"), interface.pretrained_token_embedding("image")
    assert text.shape == image.shape == (32,)
    embeddings = model.embeddings
    norm = embeddings.text.LayerNorm  # on the scale of the tokens entering the stream
    torch.testing.assert_close(text, norm(embeddings.text.word_embeddings.weight[model.config.cls_token_id]))
    torch.testing.assert_close(image, norm(embeddings.image_projection.bias + embeddings.image_type_embedding))
    with pytest.raises(ValueError, match="audio"):
        interface.pretrained_token_embedding("audio")


def test_check_inputs_errors() -> None:
    interface = FusedBackbone(AutoModel.from_config(tiny_config()))
    ids = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\[B, 3, 30, 30\].*FusedProcessor"):
        interface.check_inputs({"input_ids": ids, "pixel_values": torch.zeros(1, 3, 64, 64)})
    with pytest.raises(ValueError, match=r"\[B, 3, 30, 30\]"):
        interface.check_inputs({"input_ids": ids, "pixel_values": torch.zeros(1, 1, 30, 30)})
    with pytest.raises(ValueError, match="at most 16 text tokens"):
        interface.check_inputs({"input_ids": torch.ones(1, 17, dtype=torch.long),
                                "pixel_values": torch.zeros(1, 3, 30, 30)})


def test_feature_cache_and_frozen_image_encoder() -> None:
    model = AutoModel.from_config(tiny_config())
    pixels = torch.randn(3, 3, 30, 30)
    first = model.embeddings.image_features(pixels)
    assert len(model.embeddings.feature_cache) == 3
    again = model.embeddings.image_features(torch.cat([pixels[:1], torch.randn(1, 3, 30, 30)]))
    assert len(model.embeddings.feature_cache) == 4
    torch.testing.assert_close(again[0], first[0])
    assert not first.requires_grad  # no gradient reaches the frozen image encoder
    model.train()
    assert not model.embeddings.image_encoder.training and model.encoder.training


def test_image_features_do_not_depend_on_the_batch_that_first_encoded_them(batch_sensitive_images) -> None:
    """An image's cached features are the same whether the first call that met it held 1, 3 or 40 uncached images
    (the stand-in encoder rounds batches under 16 differently, as EfficientNet-Lite0 does on oneDNN). Catches
    encoding each call's uncached images as one batch of whatever size: the cache then kept the bits of the first
    batch an image met, so a reloaded model that met the test images in another batch than the process that trained
    it (REDEEM/RAGPT embed a split in batches of 32 for retrieval before predicting it) gave other logits, 2e-6 to
    5e-6 apart on the emoji data."""
    model = AutoModel.from_config(tiny_config()).eval()
    pixels = torch.randn(40, 3, 30, 30)
    with torch.no_grad():
        encoder = model.embeddings.image_encoder
        assert not torch.equal(encoder.extract_features(pixels)[:3], encoder.extract_features(pixels[:3]))
        together = model.embeddings.image_features(pixels)
        model.embeddings.feature_cache.clear()
        first = model.embeddings.image_features(pixels[:3])
        single = model.embeddings.image_features(pixels[39:])
        rest = model.embeddings.image_features(pixels)
    assert torch.equal(first, together[:3]) and torch.equal(single, together[39:])
    assert torch.equal(rest, together)


def test_cached_image_features_do_not_depend_on_the_autocast_of_the_run_that_first_met_them() -> None:
    """The frozen encoder runs in fp32 under a bf16 autocast. Catches caching bf16 features from a bf16 demo run:
    every later run sharing the cache (the demo's runs share one) then got rounded features, and an fp32 forward
    (REDEEM's bank, built before Trainer's autocast) failed with 'mat1 and mat2 must have the same dtype'."""
    model = AutoModel.from_config(tiny_config()).eval()
    pixels = torch.randn(3, 3, 30, 30)
    with torch.no_grad():
        reference = model.embeddings.image_features(pixels)
        model.embeddings.feature_cache.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model.embeddings.image_encoder.extract_features(pixels).dtype == torch.bfloat16
            under_autocast = model.embeddings.image_features(pixels)
        assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, reference)
        model(input_ids=torch.randint(0, 20, (3, 4)), pixel_values=pixels)  # fp32 forward on the cached features


def test_feature_cache_file_round_trip_is_bit_identical(tmp_path) -> None:
    """Guards: a saved cache that loses entries, renames keys or rounds features (a warm demo would then train on
    other features than a cold one)."""
    model = AutoModel.from_config(tiny_config()).eval()
    pixels = torch.randn(5, 3, 30, 30)
    with torch.no_grad():
        fresh = model.embeddings.image_features(pixels)
    model.embeddings.feature_cache.save(tmp_path / FEATURES_FILE)
    cache = FeatureCache()
    config = model.config
    cache.load(tmp_path / FEATURES_FILE, (config.num_image_tokens, config.image_feature_dim))
    assert len(cache) == 5
    model.embeddings.feature_cache = cache
    model.embeddings.image_encoder = None  # nothing may be encoded again: every feature comes from the file
    assert torch.equal(model.embeddings.image_features(pixels), fresh)


@pytest.mark.parametrize(("name", "tensor", "why"), [
    ("0" * 32, torch.zeros(2, 3), "float32 \\[9, 8\\]"),
    ("0" * 32, torch.zeros(9, 8, dtype=torch.float64), "float32"),
    ("not-a-key", torch.zeros(9, 8), "'not-a-key'"),
])
def test_a_feature_cache_file_it_did_not_write_is_refused_before_loading(tmp_path, name, tensor, why) -> None:
    """Guards: loading whatever tensors a file holds into the cache (a wrong-shaped or wrongly typed entry would
    reach the projection or replace an image's features)."""
    from safetensors.torch import save_file

    save_file({name: tensor}, tmp_path / "f.safetensors")
    cache = FeatureCache()
    with pytest.raises(ValueError, match=f"f.safetensors.*{why}.*delete"):
        cache.load(tmp_path / "f.safetensors", (9, 8))
    assert len(cache) == 0


def test_a_feature_cache_file_with_more_entries_than_the_cache_holds_is_refused(tmp_path) -> None:
    """Guards: loading every entry a file lists before counting them (an oversized file would fill memory, and an
    LRU cache silently drop the first entries)."""
    from safetensors.torch import save_file

    save_file({f"{i:032x}": torch.zeros(9, 8) for i in range(3)}, tmp_path / "f.safetensors")
    with pytest.raises(ValueError, match="3 cached image features, more than this cache's 2"):
        FeatureCache(max_entries=2).load(tmp_path / "f.safetensors", (9, 8))


def test_save_load_bit_identical(tmp_path, shapes_missing) -> None:
    model = AutoModel.from_config(tiny_config()).eval()
    model.embeddings.image_feature_mean.normal_()
    model.save_pretrained(tmp_path / "fused")
    loaded = AutoModel.from_pretrained(tmp_path / "fused").eval()
    args = (torch.randint(0, 20, (2, 5)), torch.ones(2, 5, dtype=torch.long), torch.randn(2, 3, 30, 30))
    with torch.no_grad():
        assert torch.equal(model(*args).pooler_output, loaded(*args).pooler_output)
    torch.testing.assert_close(loaded.embeddings.image_feature_mean, model.embeddings.image_feature_mean)
    wrapper = MissingModalityForClassification.from_pretrained(tmp_path / "fused", num_labels=4).eval()
    wrapper.save_pretrained(tmp_path / "wrapper")
    reloaded = MissingModalityForClassification.from_pretrained(tmp_path / "wrapper").eval()
    inputs = batch(shapes_missing["test"], tiny_processor())
    with torch.no_grad():
        assert torch.equal(wrapper(**inputs).logits, reloaded(**inputs).logits)


def test_stage1_trains_only_the_alignment(tmp_path, shapes) -> None:
    model = AutoModel.from_config(tiny_config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dataset = {"train": shapes["train"].select(range(32)), "validation": shapes["test"].select(range(16))}
    model, _, report = align_fused_backbone(dataset, Stage1Settings(image_size=IMAGE_SIZE, epochs=1),
                                            model=model, processor=tiny_processor())
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"embeddings.image_projection.weight", "embeddings.image_projection.bias",
                       "embeddings.image_type_embedding", "embeddings.image_position_embeddings.weight",
                       "embeddings.image_feature_mean"}
    assert 0.0 <= report["validation_accuracy"] <= 1.0 and report["train_size"] == 32


def test_stage1_trains_the_audio_frame_embedding_too(tmp_path) -> None:
    """Catches: a three-modality stage 1 that leaves the audio projection, type and position embeddings random (or
    never feeds the audio frames, so the head's input is two modalities wide and the forward fails)."""
    model = tiny.tiny_backbone("fused_audio")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = tiny.tiny_dataset("fused_audio", n_train=32, n_test=16)
    dataset = {"train": data["train"], "validation": data["test"]}
    parts = tiny.tiny_processor("fused")
    model, _, report = align_fused_backbone(dataset, Stage1Settings(image_size=IMAGE_SIZE, epochs=1), model=model,
                                            processor=FusedProcessor(parts.tokenizer, parts.image_processor))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert {"embeddings.frames.audio.projection.weight", "embeddings.frames.audio.type_embedding",
            "embeddings.frames.audio.position_embeddings.weight"} <= changed
    assert not {k for k in changed if k.startswith(("encoder.", "embeddings.text."))}
    assert report["train_size"] == 32


# ---- the real packaged encoders ----------------------------------------------------------------
@pytest.mark.slow
def test_real_encoders_forward_backward_map(shapes_missing) -> None:
    processor = FusedProcessor.from_packaged()
    model = MissingModalityForClassification.from_backbone(FusedModel.from_packaged_encoders(), num_labels=4)
    # PEFT's modules_to_save matches names by suffix: no backbone module may end in "head".
    assert not [name for name, _ in model.backbone.named_modules() if name.endswith("head")]
    model.add_adapter(hf_missing.get_method_config("map"))
    out = model(**batch(shapes_missing["train"], processor))
    out.loss.backward()
    assert out.logits.shape == (8, 4) and torch.isfinite(out.loss)
    interface = model.interface
    assert interface.pretrained_token_embedding("text").shape == (384,)
    assert interface.pretrained_token_embedding("image").shape == (384,)


@pytest.mark.slow
def test_real_stage1_checkpoint_round_trip(tmp_path, shapes, shapes_missing) -> None:
    dataset = {"train": shapes["train"].select(range(64)), "validation": shapes["test"].select(range(16))}
    path = build_fused_backbone(tmp_path, dataset=dataset, settings=Stage1Settings(epochs=1))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert build_fused_backbone(tmp_path, dataset=dataset, settings=Stage1Settings(epochs=1)) == path
    processor = FusedProcessor.from_pretrained(path)
    model = MissingModalityForClassification.from_backbone(AutoModel.from_pretrained(path), num_labels=4).eval()
    model.save_pretrained(tmp_path / "wrapper")
    reloaded = MissingModalityForClassification.from_pretrained(tmp_path / "wrapper").eval()
    inputs = batch(shapes_missing["test"], processor)
    with torch.no_grad():
        # Same weights bit for bit; the CPU matmul kernels' rounding can depend on where a tensor sits in memory.
        torch.testing.assert_close(model(**inputs).logits, reloaded(**inputs).logits, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values(),
                                                  strict=True))
