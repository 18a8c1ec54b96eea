"""REDEEM / RAGPT: retriever channels (eq. 1), router (eq. 2-3), generator (eq. 4), reconstruction loss, memory
bank files, round trips, Trainer training and bad input."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from torch.nn import functional as F
from transformers import AutoModel, Trainer, TrainingArguments

from hf_missing import MissingModalityCollator
from hf_missing.data.synthetic import tiny_processor
from hf_missing.methods.redeem import (
    BankError,
    MemoryBank,
    RedeemCollator,
    RedeemConfig,
    RedeemModules,
    add_neighbors,
    attach_memory_bank,
    build_index,
    build_memory_bank,
    load_memory_bank,
    prepare_for_training,
)
from hf_missing.methods.redeem.bank import BANK_FILE
from hf_missing.methods.redeem.retrieval import _nearest, memory_bank_of
from hf_missing.missingness import ModalityPattern
from tests.conftest import make_model

TINY = {"num_retrieved": 3, "bank_tokens": 4}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("banks")


def _prepared(backbone, data, cache, method="redeem", **options):
    model = make_model(backbone, method, **{**TINY, **options})
    collator = MissingModalityCollator(tiny_processor(backbone))
    train, redeem_collator = prepare_for_training(model, data["train"], collator, cache_dir=cache)
    return model, train, redeem_collator


def _synthetic_bank(n=40, widths=(6, 5), seed=0) -> MemoryBank:
    rng = np.random.default_rng(seed)
    arrays = {}
    for m, d in zip(("text", "image"), widths, strict=True):
        q = rng.normal(size=(n, d))
        arrays[f"query.{m}"] = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float16)
        arrays[f"tokens.{m}"] = rng.normal(size=(n, 4, d)).astype(np.float16)
    arrays["content_hash"] = np.arange(n, dtype=np.int64)
    vectors = np.concatenate([arrays["query.text"], arrays["query.image"]], axis=1)
    return MemoryBank(arrays, build_index(vectors, "flat"), ("text", "image"), {"model_type": "x", "streams": {}})


# ---- eq. 1 ---------------------------------------------------------------------------------------------
def test_eq1_retrieval_channel_per_missing_pattern():
    bank = _synthetic_bank()
    rng = np.random.default_rng(1)
    queries = {m: rng.normal(size=(3, d)).astype(np.float32) for m, d in (("text", 6), ("image", 5))}
    queries = {m: q / np.linalg.norm(q, axis=1, keepdims=True) for m, q in queries.items()}
    present = ModalityPattern().present_matrix().numpy()
    ids = _nearest(bank, queries, present, ("text", "image"), 4, np.full(3, -1))
    cos = {m: queries[m] @ bank.arrays[f"query.{m}"].astype(np.float32).T for m in queries}
    expected = {0: cos["text"] + cos["image"], 1: cos["image"], 2: cos["text"]}  # complete, missing_text, missing_image
    for code, scores in expected.items():
        assert (ids[:, code] == np.argsort(-scores, axis=1)[:, :4]).all(), ModalityPattern().names[code]


def test_training_samples_never_retrieve_themselves_and_test_samples_are_not_in_the_bank(shapes_missing, cache):
    model, train, _ = _prepared("vilt", shapes_missing, cache)
    rows = np.asarray(train["redeem_self"])
    neighbours = np.asarray(train["redeem_neighbors"])
    assert neighbours.shape == (len(train), 3, 3)
    assert (rows >= 0).all() and len(set(rows.tolist())) == len(train)
    assert not (neighbours == rows[:, None, None]).any()
    test = add_neighbors(shapes_missing["test"], model, MissingModalityCollator(tiny_processor("vilt")))
    assert (np.asarray(test["redeem_self"]) == -1).all()
    # a complete test sample's pattern-0 neighbours score best on the sum of the two cosines (eq. 1)
    bank = memory_bank_of(model)
    sample = test[0]
    q = {m: np.asarray(sample[f"redeem_query_{m}"]) for m in ("text", "image")}
    scores = sum(bank.arrays[f"query.{m}"].astype(np.float32) @ q[m] for m in q)
    assert set(sample["redeem_neighbors"][0]) == set(np.argsort(-scores)[:3].tolist())


def test_collator_picks_the_pattern_row_and_hides_missing_queries(shapes_missing, cache):
    _, train, collator = _prepared("vilt", shapes_missing, cache)
    features = [train[i] for i in range(12)]
    batch = collator(features)
    for b, f in enumerate(features):
        code = f["missing_type"]
        assert batch["redeem_neighbors"][b].tolist() == f["redeem_neighbors"][code]
        assert (batch["redeem_query_text"][b].abs().sum() == 0) == (code == 1)
        assert (batch["redeem_query_image"][b].abs().sum() == 0) == (code == 2)


# ---- eq. 2-4 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("generator", ["cmoe", "mean"])
def test_eq2_4_router_weights_sum_to_one_and_generation_is_their_weighted_sum(generator):
    config = RedeemConfig(**TINY, generator=generator)
    modules = RedeemModules({"text": 8, "image": 6}, {"joint": 8}, config)
    condition, experts, retrieved = torch.randn(5, 6), torch.randn(5, 3, 8), torch.randn(5, 3, 4, 8)
    weights = modules.route("text", condition, experts)
    assert weights.shape == (5, 3) and torch.allclose(weights.sum(-1), torch.ones(5))
    if generator == "cmoe":
        scores = (modules.w1["text"](condition)[:, None] * modules.w2["text"](experts)).sum(-1) / np.sqrt(8)
        assert torch.allclose(weights, scores.softmax(-1), atol=1e-6)
    else:
        assert torch.allclose(weights, torch.full((5, 3), 1 / 3))
    for ffn in modules.experts["text"]:
        torch.nn.init.normal_(ffn.out.weight)
    expected = sum(weights[:, k, None, None] * modules.experts["text"][k](retrieved[:, k]) for k in range(3))
    assert torch.allclose(modules.generate("text", condition, experts, retrieved), expected, atol=1e-5)


def test_eq5_saim_prompt_attends_from_the_other_modality():
    config = RedeemConfig(**TINY, prompt_length=2)
    modules = RedeemModules({"text": 8, "image": 6}, {"joint": 8}, config)
    retrieved = {"text": torch.randn(2, 3, 4, 8), "image": torch.randn(2, 3, 4, 6)}
    attention = modules.attention["text"]
    q, k, v = attention.f_q(retrieved["image"]), attention.f_k(retrieved["text"]), attention.f_v(retrieved["text"])
    values = ((q @ k.transpose(-1, -2)) / np.sqrt(8)).softmax(-1) @ v  # eq. 6 per neighbour
    expected = values.reshape(2, 12, 8).reshape(2, 2, 6, 8).mean(2)  # adaptive pooling of 12 tokens to 2
    assert torch.allclose(modules.saim_prompt("text", retrieved), expected, atol=1e-5)


# ---- loss ----------------------------------------------------------------------------------------------
def test_reconstruction_term_is_the_mse_against_the_dropped_modality(shapes_missing, cache):
    model, train, collator = _prepared("vilt", shapes_missing, cache)
    batch = collator([train[i] for i in range(12)])
    captured = {}
    owner = model.method_pool.redeem_modules["default"]
    original = owner.generate
    owner.generate = lambda m, *a: captured.setdefault(m, original(m, *a))
    out = model(**batch)
    bank, codes, rows = memory_bank_of(model), batch["missing_type"], batch["redeem_self"]
    terms = [F.mse_loss(captured[m][codes == c], bank.lookup(f"tokens.{m}", rows[codes == c]))
             for m, c in (("text", 1), ("image", 2))]
    assert out.aux_loss > 0 and torch.allclose(out.aux_loss, torch.stack(terms).mean())
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, batch["labels"]) + out.aux_loss)
    complete = collator([{**train[i], "missing_type": 0} for i in range(6)])
    assert model(**complete).aux_loss is None


def test_generated_block_replaces_only_missing_samples_placeholders(shapes_missing, cache):
    model, train, collator = _prepared("vilt", shapes_missing, cache)
    model.eval()
    batch = collator([train[i] for i in range(12)])
    torch.manual_seed(1)
    reference = model(**batch).logits
    owner = model.method_pool.redeem_modules["default"]
    with torch.no_grad():
        owner.experts["text"][0].out.bias.add_(torch.randn(32))  # changes the generated text only
    torch.manual_seed(1)
    changed = model(**batch).logits
    has_text = batch["missing_type"] != 1
    assert torch.allclose(changed[has_text], reference[has_text], atol=1e-5)
    assert not torch.allclose(changed[~has_text], reference[~has_text])


# ---- ablations, RAGPT ------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [
    {"retrieval": "random"}, {"retrieval": "none"}, {"generator": "cross_modal"}, {"generator": "mean"},
    {"generator": "none"}, {"prompter": "static"}, {"prompter": "intra"}, {"prompter": "none"},
    {"label_token": True, "prompt_layer": 0},
])
@pytest.mark.parametrize("backbone", ["vilt", "clip"])
def test_table3_switches_and_ragpt_run_and_train(shapes_missing, cache, backbone, options):
    model, train, collator = _prepared(backbone, shapes_missing, cache, **options)
    out = model(**collator([train[i] for i in range(12)]))
    out.loss.backward()
    trained = [p for n, p in model.named_parameters() if "redeem_modules" in n]
    assert trained and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    if options == {"generator": "none"}:
        assert out.aux_loss is None


def test_ragpt_is_the_no_router_intra_modal_variant_with_a_label_token(shapes_missing, cache):
    model, train, collator = _prepared("clip", shapes_missing, cache, method="ragpt")
    config = model.peft_config["default"]
    assert (config.generator, config.prompter, config.label_token, config.recon_weight) == ("mean", "intra", True, 0)
    assert any("ragpt_modules.default.label_embeddings" in n for n, _ in model.named_parameters())
    assert model(**collator([train[i] for i in range(8)])).aux_loss is None


# ---- files ------------------------------------------------------------------------------------------------
def test_save_load_is_bit_identical_including_the_bank(shapes_missing, cache, tmp_path):
    make_model("vilt", None).save_pretrained(tmp_path / "base")
    model = AutoModel.from_pretrained(tmp_path / "base", adapter="redeem", adapter_options=TINY, num_labels=4)
    collator = MissingModalityCollator(tiny_processor("vilt"))
    train, collator = prepare_for_training(model, shapes_missing["train"], collator, cache_dir=cache)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    batch = collator([train[i] for i in range(12)])
    torch.manual_seed(1)
    logits = model(**batch).logits
    model.save_pretrained(tmp_path / "adapter")
    assert BANK_FILE in {p.name for p in (tmp_path / "adapter").iterdir()}
    loaded = AutoModel.from_pretrained(tmp_path / "adapter").eval()
    bank = load_memory_bank(loaded, tmp_path / "adapter")
    original = memory_bank_of(model)
    assert all(np.array_equal(bank.arrays[k], original.arrays[k]) for k in original.arrays)
    assert isinstance(bank.arrays["tokens.text"], np.memmap)
    q = np.asarray(original.arrays["query.text"][:5], dtype=np.float32)
    q = np.concatenate([q, np.zeros((5, original.width("image")), np.float32)], axis=1)
    assert np.array_equal(bank.search(q, 3)[1], original.search(q, 3)[1])
    torch.manual_seed(1)
    assert torch.equal(loaded(**batch).logits, logits)


def test_bank_build_is_cached_by_fingerprint(shapes_missing, cache):
    model = make_model("vilt", "redeem", **TINY)
    collator = MissingModalityCollator(tiny_processor("vilt"))
    first = build_memory_bank(model, shapes_missing["train"], collator, num_tokens=4, cache_dir=cache)
    again = build_memory_bank(model, shapes_missing["train"], collator, num_tokens=4, cache_dir=cache)
    assert first.key == again.key and isinstance(again.arrays["query.text"], np.memmap)
    other = build_memory_bank(model, shapes_missing["train"].select(range(50)), collator, num_tokens=4,
                              cache_dir=cache)
    assert other.key != first.key and len(other) == 50


# ---- training ---------------------------------------------------------------------------------------------
def test_trainer_reduces_the_loss(shapes_missing, cache, tmp_path):
    model, train, collator = _prepared("vilt", shapes_missing, cache)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", num_train_epochs=10,
                             per_device_train_batch_size=16, learning_rate=1e-2, logging_steps=1, save_strategy="no",
                             remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert "redeem/default/router_max_weight" in model.diagnostics()


# ---- bad input ---------------------------------------------------------------------------------------------
def test_bank_of_another_backbone_is_refused(shapes_missing, cache):
    clip_model, _, _ = _prepared("clip", shapes_missing, cache)
    vilt_model = make_model("vilt", "redeem", **TINY)
    with pytest.raises(BankError, match="built with a clip backbone"):
        attach_memory_bank(vilt_model, memory_bank_of(clip_model))
    wider = make_model("vilt", "redeem", **{**TINY, "bank_tokens": 8})
    vilt_bank = memory_bank_of(_prepared("vilt", shapes_missing, cache)[0])
    with pytest.raises(BankError, match="bank_tokens=8"):
        attach_memory_bank(wider, vilt_bank)


def test_k_larger_than_the_bank_empty_bank_and_test_split_are_refused(shapes_missing, cache):
    collator = MissingModalityCollator(tiny_processor("vilt"))
    model = make_model("vilt", "redeem", **TINY)
    small = build_memory_bank(model, shapes_missing["train"].select(range(3)), collator, num_tokens=4, cache_dir=cache)
    with pytest.raises(BankError, match="num_retrieved=3 needs a memory bank of more than 3"):
        attach_memory_bank(model, small)
    with pytest.raises(BankError, match="empty"):
        build_memory_bank(model, shapes_missing["train"].select([]), collator, num_tokens=4, cache_dir=cache)
    with pytest.raises(BankError, match="empty"):
        build_index(np.zeros((0, 8), np.float16))
    test = Dataset.from_dict(shapes_missing["test"][:4], features=shapes_missing["test"].features, split="test")
    with pytest.raises(BankError, match="never from the test split"):
        prepare_for_training(model, test, collator, cache_dir=cache)


def test_missing_neighbours_and_missing_bank_are_clear_errors(shapes_missing, cache):
    model = make_model("vilt", "redeem", **TINY)
    collator = MissingModalityCollator(tiny_processor("vilt"))
    with pytest.raises(RuntimeError, match="has no memory bank"):
        model(**collator([shapes_missing["train"][i] for i in range(4)]))
    prepared, _, _ = _prepared("vilt", shapes_missing, cache)
    with pytest.raises(ValueError, match="retrieved neighbours"):
        prepared(**collator([shapes_missing["train"][i] for i in range(4)]))
    with pytest.raises(ValueError, match="no retrieved neighbours"):
        RedeemCollator(collator)([shapes_missing["train"][i] for i in range(4)])
    with pytest.raises(ValueError, match="generator must be one of"):
        RedeemConfig(generator="gan")
