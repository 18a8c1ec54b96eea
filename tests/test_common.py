"""The common suite: the same PEFT contract checked for every registered method on every tiny backbone.

Each test is parametrised over ``hf_missing.list_methods()`` x ``TINY_BACKBONES`` (ids such as ``rep-fused_audio``):
which parameters train, a frozen backbone under an optimiser step, local and Hub round trips, disabling, switching
and deleting adapters, one ``Trainer`` step, and per-sample independence inside a batch. ``fused_audio`` is the
three-modality (text + image + audio) backbone and ``sequence`` the backbone of three feature sequences (text, audio
and vision frames); the data of each covers all seven missing patterns.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from datasets import Dataset
from huggingface_hub import HfApi
from PIL import Image
from transformers import AutoModel, Trainer, TrainingArguments

import hf_missing
from hf_missing import MissingModalityCollator, MissingModalityForClassification, simulate_missing
from hf_missing.backbones.tiny import TINY_BACKBONES, tiny_backbone, tiny_processor
from hf_missing.data.synthetic import SEQUENCE_WIDTHS, sequence_dataset, shapes_dataset
from hf_missing.methods import METHODS, prepare_for_evaluation, prepare_for_training
from hf_missing.methods.base import MissingMethodLayer
from tests.conftest import perturbed
from tests.test_hub import hub  # noqa: F401  (the offline fake Hub fixture)

# Options that fit the tiny backbones (2 layers per stream, 16 text positions) and keep every forward cheap.
OPTIONS = {
    "baseline": {},
    "cmpt": {},
    "lora": {},
    "map": {"prompt_length": 2, "prompt_depth": 2},
    "memprompt": {"prompt_length": 2, "memory_size": 4, "top_n": 2, "prompt_layers": [0, 1]},
    "ragpt": {"num_retrieved": 2, "bank_tokens": 2, "prompt_length": 2, "prompt_layer": 1},
    "redeem": {"num_retrieved": 2, "bank_tokens": 2, "prompt_length": 2, "prompt_layer": 1},
    "rep": {"prompt_length": 2, "prompt_depth": 2, "shared_dim": 8, "mlp_reduction": 4},
}
AUDIO_MODALITIES = ("text", "image", "audio")
AUDIO_SHARES = {"missing_text": 0.2, "missing_image": 0.2, "missing_audio": 0.15, "missing_text_image": 0.15,
                "missing_text_audio": 0.15, "missing_image_audio": 0.15}
SEQUENCE_MODALITIES = tuple(SEQUENCE_WIDTHS)
SEQUENCE_SHARES = {"missing_text": 0.2, "missing_audio": 0.2, "missing_vision": 0.15, "missing_text_audio": 0.15,
                   "missing_text_vision": 0.15, "missing_audio_vision": 0.15}
MODALITIES = {"fused_audio": AUDIO_MODALITIES, "sequence": SEQUENCE_MODALITIES}
CASES = [pytest.param(m, b, id=f"{m}-{b}") for m in hf_missing.list_methods() for b in TINY_BACKBONES]
BATCH = 8


def test_every_registered_method_and_tiny_backbone_is_covered():
    """Catches a newly registered method (or tiny backbone) that the common suite silently leaves out."""
    assert set(OPTIONS) == set(hf_missing.list_methods())
    assert {"clip", "vilt", "fused", "fused_audio", "sequence"} <= set(TINY_BACKBONES)


# ---- fixtures ---------------------------------------------------------------------------------------------
# One thread also hides misaligned reloaded tensors from the round trips below (every GEMM is then bit-reproducible
# whatever the alignment): test_reloaded_adapter_tensors_are_aligned checks that directly.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    """REDEEM/RAGPT memory banks go to a temporary cache (reused across this module's tests), not ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_MISSING_CACHE", str(tmp_path_factory.mktemp("hf_missing_cache")))
        yield


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each tiny backbone saved once: adapters name their backbone by path."""
    root = tmp_path_factory.mktemp("backbones")
    for kind in TINY_BACKBONES:
        tiny_backbone(kind).save_pretrained(root / kind)
    return {kind: str(root / kind) for kind in TINY_BACKBONES}


@pytest.fixture(scope="module")
def data():
    """Tiny train splits: text + image for the two-modality backbones; text + image + audio with every one of the
    seven missing patterns for ``fused_audio``; text, audio and vision frames with all seven for ``sequence``."""
    pair = simulate_missing(shapes_dataset(n_train=12, n_test=2, seed=0), rate=0.75, pattern="both", seed=0)
    triple = simulate_missing(shapes_dataset(n_train=16, n_test=2, seed=0, audio=True), rate=0.85,
                              pattern=AUDIO_SHARES, modalities=AUDIO_MODALITIES, seed=0)
    frames = simulate_missing(sequence_dataset(n_train=16, n_test=2, seed=0), rate=0.85, pattern=SEQUENCE_SHARES,
                              modalities=SEQUENCE_MODALITIES, seed=0)
    assert set(triple["train"]["missing_type"]) == set(frames["train"]["missing_type"]) == set(range(7))
    splits = {"fused_audio": triple, "sequence": frames}
    return {kind: splits.get(kind, pair)["train"] for kind in TINY_BACKBONES}


@pytest.fixture(scope="module")
def hub_backbones(hub, folders):  # noqa: F811
    """The tiny backbones as Hub repos ``common/<kind>`` on the fake Hub."""
    api = HfApi()
    for kind, folder in folders.items():
        api.create_repo(f"common/{kind}")
        api.upload_folder(repo_id=f"common/{kind}", folder_path=folder)
    return {kind: f"common/{kind}" for kind in TINY_BACKBONES}


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_auto_model_injects_the_method_into_a_raw_checkpoint(method, kind, folders):
    """Catches ``AutoModel.from_pretrained(<raw backbone>, adapter=...)`` returning the bare backbone (or raising
    transformers' unexpected-keyword error): it must be the wrapper with the method injected, on every backbone."""
    model = AutoModel.from_pretrained(folders[kind], adapter=method, adapter_options=OPTIONS[method], num_labels=3)
    assert isinstance(model, MissingModalityForClassification) and model.config.num_labels == 3
    assert model.peft_config["default"].method_name == method
    assert model.interface.modalities == MODALITIES.get(kind, ("text", "image"))


# ---- helpers ----------------------------------------------------------------------------------------------
def _wrapper(source: str) -> MissingModalityForClassification:
    return MissingModalityForClassification.from_pretrained(source, num_labels=4)


def _inject(model, method: str, name: str | None = None) -> MissingModalityForClassification:
    model.add_adapter(hf_missing.get_method_config(method, **OPTIONS[method]), adapter_name=name)
    return model


def _collator(model, kind: str) -> MissingModalityCollator:
    return MissingModalityCollator(tiny_processor(kind), modalities=model.interface.inputs)


def _prepared(model, kind: str, train):
    """The training split and collator the model's methods need (REDEEM/RAGPT: memory bank and neighbours)."""
    return prepare_for_training(model, train, _collator(model, kind))


def _build(source: str, method: str, kind: str, train):
    model = _inject(_wrapper(source), method)
    data, collator = _prepared(model, kind, train)
    return model, data, collator


def _rows(dataset, n: int = BATCH) -> list[dict]:
    """``n`` samples covering as many missing patterns as the split holds (one of each first)."""
    codes = dataset["missing_type"]
    first = list(dict.fromkeys(codes))
    picked = [codes.index(c) for c in first][:n]
    picked += [i for i in range(len(codes)) if i not in picked][:n - len(picked)]
    return [dataset[i] for i in sorted(picked)]


def _logits(model, batch) -> torch.Tensor:
    torch.manual_seed(1)  # ViLT draws a random patch order on every forward
    with torch.no_grad():
        return model(**batch).logits


def _same(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Bit-identical, else a short message with the largest difference (no tensor or model reprs)."""
    if not torch.equal(actual, expected):
        diff = (actual - expected).abs()
        raise AssertionError(f"{what}: not bit-identical, max |diff| {diff.max().item():.3g} in samples "
                             f"{diff.amax(dim=-1).nonzero().flatten().tolist()}")


def _owns(name: str, prefix: str, saved: list[str], adapter: str = "default") -> bool:
    """A parameter of the adapter: inside one of the method's own containers (named with its prefix) or in the
    adapter's trainable copy of a saved module (head, pooler)."""
    parts = name.split(".")
    if adapter not in parts:
        return False
    return (any(p.startswith(prefix) for p in parts)
            or any(name.startswith(f"{m}.modules_to_save.{adapter}.") for m in saved))


def _mentions(name: str, adapter: str) -> bool:
    return re.search(rf"(^|\.){re.escape(adapter)}(\.|$)", name) is not None


# ---- 1. parameters ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "kind"), CASES)
def test_only_the_method_and_saved_modules_train(folders, method, kind):
    """Catches a method that leaves a backbone weight trainable (e.g. a wrapped layer or LoRA's base weight whose
    requires_grad is not reset), that trains a tensor outside its prefixed containers (peft then drops it from the
    saved adapter), or that forgets to train the head / pooler copies (``modules_to_save``)."""
    model = _inject(_wrapper(folders[kind]), method)
    config = model.peft_config["default"]
    prefix = METHODS[method].model_cls.prefix
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    strays = [n for n in trainable if not _owns(n, prefix, config.modules_to_save)]
    assert trainable and not strays, strays
    assert "head" in config.modules_to_save
    for module in config.modules_to_save:
        assert any(n.startswith(f"{module}.modules_to_save.default.") for n in trainable), module
    own = [n for n in trainable if ".modules_to_save." not in n]
    assert bool(own) == (method != "baseline"), own
    backbone = [n for n, p in model.named_parameters() if not _owns(n, prefix, config.modules_to_save)]
    assert backbone and not any(dict(model.named_parameters())[n].requires_grad for n in backbone)


# ---- 2. one optimiser step ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "kind"), CASES)
def test_one_step_leaves_the_backbone_bit_identical(folders, data, method, kind):
    """Catches gradients or in-place updates reaching frozen weights or buffers (a method that writes into the
    backbone's embeddings, a LoRA merge left in place, a shared tensor aliased between adapter and backbone), and a
    method whose trainable tensors get no gradient at all (a zero-initialised path that is never connected to the
    loss, a detached prompt)."""
    model, train, collator = _build(folders[kind], method, kind, data[kind])
    model.train()
    prefix, saved = METHODS[method].model_cls.prefix, model.peft_config["default"].modules_to_save
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.clone() for n, b in model.named_buffers() if not _owns(n, prefix, saved)}
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trained.items()}
    optimiser = torch.optim.AdamW(trained.values(), lr=1e-2, weight_decay=0.0)  # no decay: a change needs a gradient
    torch.manual_seed(1)
    loss = model(**collator(_rows(train))).loss
    loss.backward()
    assert torch.isfinite(loss)
    method_grads = [p.grad for n, p in trained.items() if ".modules_to_save." not in n]
    if method != "baseline":
        assert any(g is not None and g.abs().sum() > 0 for g in method_grads), "no gradient reached the method"
    optimiser.step()
    params, current = dict(model.named_parameters()), dict(model.named_buffers())
    changed = [n for n, p in frozen.items() if not torch.equal(params[n], p)]
    assert not changed, changed
    assert not [n for n, b in buffers.items() if not torch.equal(current[n], b)]
    assert any(not torch.equal(trained[n], v) for n, v in before.items())


# ---- 3. local round trip ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "kind"), CASES)
def test_save_and_reload_is_bit_identical(folders, data, method, kind, tmp_path):
    """Catches a trained tensor that save_pretrained drops or from_pretrained re-initialises (a buffer outside the
    adapter's prefix, a shared tensor saved once under the wrong key, a head rebuilt with other settings), and a
    method option or method file (REDEEM's bank) that does not survive the folder, through both
    MissingModalityForClassification and AutoModel."""
    model, train, collator = _build(folders[kind], method, kind, data[kind])
    perturbed(model)
    batch = collator(_rows(train))
    reference = _logits(model, batch)
    model.save_pretrained(tmp_path / "adapter")
    loaded = MissingModalityForClassification.from_pretrained(tmp_path / "adapter").eval()
    _same(_logits(loaded, batch), reference, "MissingModalityForClassification.from_pretrained(folder)")
    auto = AutoModel.from_pretrained(tmp_path / "adapter").eval()
    assert isinstance(auto, MissingModalityForClassification)
    _same(_logits(auto, batch), reference, "AutoModel.from_pretrained(folder)")


@pytest.mark.parametrize("method", hf_missing.list_methods())
def test_reloaded_adapter_tensors_are_aligned(folders, data, method, tmp_path):
    """Catches adapter tensors left as views of the safetensors buffer (``load_file`` returns 8-byte-aligned
    tensors) instead of torch allocations (64-byte aligned): with several intra-op threads, MKL / oneDNN GEMMs on
    such buffers round differently, so a reloaded adapter's logits differ in the last bits from the trained model's
    (seen on rep-clip with two threads), and bit-exact round trips hold only on one thread."""
    model, _, _ = _build(folders["clip"], method, "clip", data["clip"])
    model.save_pretrained(tmp_path / "adapter")
    loaded = MissingModalityForClassification.from_pretrained(tmp_path / "adapter")
    config = loaded.peft_config["default"]
    prefix = METHODS[method].model_cls.prefix
    adapter = {n: p for n, p in loaded.named_parameters() if _owns(n, prefix, config.modules_to_save)}
    misaligned = sorted(n for n, p in adapter.items() if p.data_ptr() % 64)
    assert adapter and not misaligned, f"{len(misaligned)} of {len(adapter)} misaligned, e.g. {misaligned[:3]}"


# ---- 4. Hub round trip --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "kind"), CASES)
def test_hub_round_trip_is_bit_identical(hub_backbones, data, method, kind):
    """Catches an adapter repo that lacks something needed to rebuild the model (a method file such as REDEEM's
    bank not uploaded or not downloaded, settings missing from adapter_config.json, the backbone named by a local
    path instead of its Hub id), through push_to_hub and AutoModel.from_pretrained(repo)."""
    model, train, collator = _build(hub_backbones[kind], method, kind, data[kind])
    perturbed(model)
    batch = collator(_rows(train))
    reference = _logits(model, batch)
    repo = f"org/common-{method}-{kind}"
    model.push_to_hub(repo)
    loaded = AutoModel.from_pretrained(repo).eval()
    assert isinstance(loaded, MissingModalityForClassification)
    assert loaded.config.backbone_name_or_path == hub_backbones[kind]
    _same(_logits(loaded, batch), reference, f"AutoModel.from_pretrained({repo!r})")


# ---- 5. disabling the adapter -------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "kind"), CASES)
def test_disabled_adapter_gives_the_bare_wrapper(folders, data, method, kind):
    """Catches a method layer that ignores the disable flag (keeps inserting prompts, keeps its LoRA branch, keeps
    replacing a missing modality), state it leaves behind in the forward context, a head copy that stays in use
    when disabled, and re-enabling that does not bring every part of the adapter back (head copy included)."""
    torch.manual_seed(0)
    bare = _wrapper(folders[kind]).eval()
    torch.manual_seed(0)
    model = _wrapper(folders[kind])
    assert torch.equal(model.head.out.weight, bare.head.out.weight)
    model = _inject(model, method)
    train, collator = _prepared(model, kind, data[kind])
    perturbed(model)
    batch = collator(_rows(train))
    reference, adapted = _logits(bare, batch), _logits(model, batch)
    assert not torch.allclose(adapted, reference)
    model.disable_adapters()
    _same(_logits(model, batch), reference, "disable_adapters() vs the bare wrapper")
    model.enable_adapters()
    _same(_logits(model, batch), adapted, "enable_adapters() after disable_adapters() vs the adapted model")


# ---- 6. two adapters ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "kind"), CASES)
def test_two_adapters_switch_and_delete(folders, data, method, kind):
    """Catches per-adapter tensors keyed on the layer instead of the adapter name (set_adapter then changes
    nothing), state that delete_adapter leaves behind (a container, buffer or module of the deleted adapter in the
    state dict), and a model that no longer runs, or runs differently, with the remaining adapter."""
    model = _inject(_wrapper(folders[kind]), method, "a")
    perturbed(model)
    keys_a = set(model.state_dict())
    _inject(model, method, "b")
    perturbed(model)
    train, collator = _prepared(model, kind, data[kind])
    batch = collator(_rows(train))
    model.set_adapter("a")
    logits_a = _logits(model, batch)
    model.set_adapter("b")
    assert not torch.allclose(_logits(model, batch), logits_a)
    model.delete_adapter("b")
    assert set(model.peft_config) == {"a"}
    left = [k for k in model.state_dict() if _mentions(k, "b")]
    left += [n for n, _ in model.named_modules() if _mentions(n, "b")]
    assert not left, left
    assert not any("b" in layer.method_config for layer in model.modules() if isinstance(layer, MissingMethodLayer))
    assert set(model.state_dict()) == keys_a
    model.set_adapter("a")
    _same(_logits(model, batch), logits_a, "adapter 'a' after deleting 'b'")


# ---- 7. Trainer ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "kind"), CASES)
def test_trainer_runs_one_step(folders, data, method, kind, tmp_path):
    """Catches a method that breaks under transformers.Trainer: extra batch columns it needs removed or refused,
    an auxiliary loss that is not a scalar tensor, NaN from a padded or missing modality, a collator that Trainer
    cannot call."""
    model, train, collator = _build(folders[kind], method, kind, data[kind])
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", max_steps=1,
                             per_device_train_batch_size=BATCH, remove_unused_columns=False, save_strategy="no",
                             disable_tqdm=True, logging_steps=1)
    result = Trainer(model=model, args=args, train_dataset=train, data_collator=collator).train()
    assert result.global_step == 1 and math.isfinite(result.training_loss) and result.training_loss > 0


# ---- 8. per-sample independence -----------------------------------------------------------------------------
def _mixed_samples(train, kind: str) -> list[dict]:
    """Samples of different text lengths, missing patterns and image sizes (a 60x30 image next to 30x30 ones and
    next to missing images), and for ``fused_audio`` audio of different lengths; for ``sequence`` every modality's
    frames of different lengths next to missing ones."""
    if kind == "sequence":
        return _mixed_sequences(train)
    base = [train[i] for i in range(5)]
    long_text = "a photo of the small red circle on white picture some"
    wide = Image.new("RGB", (60, 30))
    wide.paste(base[2]["image"], (15, 0))
    if kind == "fused_audio":
        specs = [("complete", "red circle", None, 3), ("missing_image", long_text, None, 8),
                 ("complete", "some green square", wide, 5), ("missing_text_audio", None, None, 3),
                 ("missing_audio", long_text, wide, 4), ("missing_text_image", None, None, 8)]
    else:
        specs = [("complete", "red circle", None, 0), ("missing_image", long_text, None, 0),
                 ("complete", "some green square", wide, 0), ("missing_text", None, None, 0),
                 ("complete", long_text, wide, 0), ("missing_image", "blue triangle", None, 0)]
    names = train.features["missing_type"].names
    samples = []
    for i, (pattern, text, image, frames) in enumerate(specs):
        sample = dict(base[i % len(base)])
        sample["missing_type"] = names.index(pattern)
        sample["text"] = text or sample["text"]
        sample["image"] = image or sample["image"]
        if frames:
            sample["audio"] = [[0.1 * (i + 1) + 0.05 * t] * len(sample["audio"][0]) for t in range(frames)]
        samples.append(sample)
    return samples


def _mixed_sequences(train) -> list[dict]:
    """Samples of the sequence backbone: patterns with one, two or three modalities, each present one of 3 to 8
    frames (so the batch pads each modality differently)."""
    specs = [("complete", {"text": 3, "audio": 8, "vision": 5}), ("missing_text", {"audio": 4, "vision": 8}),
             ("missing_audio_vision", {"text": 8}), ("missing_vision", {"text": 5, "audio": 3}),
             ("complete", {"text": 8, "audio": 3, "vision": 3}), ("missing_text_audio", {"vision": 6})]
    names = train.features["missing_type"].names
    samples = []
    for i, (pattern, lengths) in enumerate(specs):
        sample = dict(train[i])
        sample["missing_type"] = names.index(pattern)
        for modality, frames in lengths.items():
            width = SEQUENCE_WIDTHS[modality]
            sample[modality] = [[0.1 * (i + 1) + 0.05 * t + 0.01 * j for j in range(width)] for t in range(frames)]
        samples.append(sample)
    return samples


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_a_samples_logits_do_not_depend_on_its_batch(folders, data, method, kind):
    """Catches padding that leaks into a sample's result: a pooled query or prompt computed over padded text or
    image tokens, a missing modality's placeholder sized to the batch's largest image (ViLT), a prompt inserted at
    a batch-wide position, retrieval or normalisation across the batch."""
    model, _, collator = _build(folders[kind], method, kind, data[kind])
    perturbed(model)
    raw = _mixed_samples(data[kind], kind)
    split = Dataset.from_list(raw, features=data[kind].features, split="validation")
    samples = list(prepare_for_evaluation(model, split, collator))
    together = _logits(model, collator(samples))
    for i, sample in enumerate(samples):
        torch.testing.assert_close(_logits(model, collator([sample]))[0], together[i], atol=1e-5, rtol=1e-4,
                                   msg=lambda m, i=i: f"sample {i} ({raw[i]['missing_type']}): {m}")


@pytest.fixture(scope="module")
def sampling_vilt(tmp_path_factory):
    """The tiny ViLT with ``max_image_length`` 10, below a 30x30 image's 25 patches (and a 60x30 one's 50): here
    transformers draws a random subset of each image's patches on every forward."""
    backbone = tiny_backbone("vilt")
    backbone.config.max_image_length = 10
    folder = tmp_path_factory.mktemp("vilt-max10")
    backbone.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("method", hf_missing.list_methods())
def test_vilt_evaluation_is_deterministic_when_it_samples_patches(sampling_vilt, data, method):
    """Catches transformers' patch draw at evaluation (a fresh random subset of ViLT's patches per forward, which
    also changed REDEEM's bank between two builds) and a draw seeded per batch (a sample's patches, hence its
    logits, would depend on its batch neighbours): two evaluations under different global seeds are bit-identical,
    and each sample alone gives its row of the batch."""
    model, _, collator = _build(sampling_vilt, method, "vilt", data["vilt"])
    perturbed(model)
    split = Dataset.from_list(_mixed_samples(data["vilt"], "vilt"), features=data["vilt"].features)
    samples = list(prepare_for_evaluation(model, split, collator))
    with torch.no_grad():
        first = model(**collator(samples)).logits
        torch.manual_seed(123)
        _same(model(**collator(samples)).logits, first, f"{method}: a second evaluation")
        for i, sample in enumerate(samples):
            torch.testing.assert_close(model(**collator([sample])).logits[0], first[i], atol=1e-5, rtol=1e-4)
