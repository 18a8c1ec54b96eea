"""REDEEM / RAGPT: retriever channels (eq. 1), router (eq. 2-3), generator (eq. 4), prompters (eq. 5-6),
reconstruction loss, K modalities (text + image + audio), the two-modality numbers kept, memory bank files, round
trips, Trainer training and bad input."""

import copy
import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset, concatenate_datasets
from PIL import Image
from torch.nn import functional as F
from transformers import AutoModel, Trainer, TrainingArguments

import hf_missing
from hf_missing import MissingModalityCollator, MissingModalityForClassification, simulate_missing
from hf_missing.backbones import Stream
from hf_missing.backbones.tiny import tiny_backbone, tiny_processor
from hf_missing.context import ForwardContext
from hf_missing.data.synthetic import shapes_dataset
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
    evaluation_neighbors,
    load_memory_bank,
    prepare_for_training,
    retrieval,
)
from hf_missing.methods.redeem import layer as redeem_layer
from hf_missing.methods.redeem.bank import BANK_FILE, bank_fingerprint, content_hashes
from hf_missing.methods.redeem.layer import RedeemLayer, RedeemRun
from hf_missing.methods.redeem.retrieval import (
    _nearest,
    _random,
    channel_table,
    memory_bank_of,
    pattern_queries,
)
from hf_missing.missingness import ModalityPattern
from tests.conftest import make_model, perturbed

TINY = {"num_retrieved": 3, "bank_tokens": 4}
THREE = {"text": 8, "image": 6, "audio": 5}  # modality widths of the synthetic three-modality cases
AUDIO_MODALITIES = ("text", "image", "audio")
AUDIO_SHARES = {"missing_text": 0.2, "missing_image": 0.2, "missing_audio": 0.15, "missing_text_image": 0.15,
                "missing_text_audio": 0.15, "missing_image_audio": 0.15}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("banks")


def _prepared(backbone, data, cache, method="redeem", **options):
    model = make_model(backbone, method, **{**TINY, **options})
    collator = MissingModalityCollator(tiny_processor(backbone))
    train, redeem_collator = prepare_for_training(model, data["train"], collator, cache_dir=cache)
    return model, train, redeem_collator


def _synthetic_bank(n=40, widths=None, seed=0) -> MemoryBank:
    widths = widths or {"text": 6, "image": 5}
    rng = np.random.default_rng(seed)
    arrays = {}
    for m, d in widths.items():
        q = rng.normal(size=(n, d))
        arrays[f"query.{m}"] = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float16)
        arrays[f"tokens.{m}"] = rng.normal(size=(n, 4, d)).astype(np.float16)
    arrays["content_hash"] = np.arange(n, dtype=np.int64)
    vectors = np.concatenate([arrays[f"query.{m}"] for m in widths], axis=1)
    return MemoryBank(arrays, build_index(vectors, "flat"), tuple(widths), {"model_type": "x", "streams": {}})


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def triple():
    """Text + image + audio samples covering all seven missing patterns (the fused_audio backbone's data)."""
    data = simulate_missing(shapes_dataset(n_train=24, n_test=4, seed=0, audio=True), rate=0.9,
                            pattern=AUDIO_SHARES, modalities=AUDIO_MODALITIES, seed=0)
    assert set(data["train"]["missing_type"]) == set(range(7))
    return data


def _prepared_audio(data, cache, policy="dummy", **options):
    model = MissingModalityForClassification.from_backbone(tiny_backbone("fused_audio"), num_labels=4)
    model.add_adapter(hf_missing.get_method_config("redeem", **{**TINY, **options}))
    collator = MissingModalityCollator(tiny_processor("fused_audio"), policy=policy, modalities=model.interface.inputs)
    train, redeem_collator = prepare_for_training(model, data["train"], collator, cache_dir=cache)
    return model, train, redeem_collator


def _one_per_pattern(train) -> list[dict]:
    codes = train["missing_type"]
    return [train[codes.index(c)] for c in sorted(set(codes))]


def _capture_generated(model) -> dict:
    """The generated tokens of each modality in the model's forwards (the last forward's, by modality)."""
    modules, captured = model.method_pool.redeem_modules["default"], {}
    original = modules.generate

    def generate(modality, *args):
        captured[modality] = original(modality, *args)
        return captured[modality]

    modules.generate = generate
    return captured


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


def test_a_sample_retrieves_no_copy_of_itself():
    """Item 3 of issue 16: a training sample with an exact duplicate in the bank (same content hash, same vectors)
    retrieves neither row, under eq. 1 and under "Random". Catches self-exclusion by one row per hash (the last), which
    hands the sample its duplicate (its own label) as the best neighbour."""
    bank = _synthetic_bank()
    for key in ("query.text", "query.image", "tokens.text", "tokens.image", "content_hash"):
        bank.arrays[key][7] = bank.arrays[key][3]
    bank.index = build_index(np.concatenate([bank.arrays["query.text"], bank.arrays["query.image"]], axis=1), "flat")
    queries = {m: bank.arrays[f"query.{m}"][[3]].astype(np.float32) for m in ("text", "image")}
    hashes = bank.arrays["content_hash"][[3]]
    ids = _nearest(bank, queries, ModalityPattern().present_matrix().numpy(), ("text", "image"), 4, hashes)
    assert ids.shape == (1, 3, 4) and not np.isin(ids, [3, 7]).any()
    drawn = _random(bank, 4, np.repeat(hashes, 40), list(range(40)), 0, 3)  # 40 draws of 5 rows out of 40
    assert drawn.shape == (40, 3, 4) and not np.isin(drawn, [3, 7]).any()
    assert bank.rows_of(hashes).tolist() == [3]


def test_ragpt_multi_channel_retriever_gives_each_held_modality_its_own_neighbours():
    """Item 8c, RAGPT's multi-channel retriever (METHODS_REFERENCE §1E; RAGPT's dataloaders): a complete sample's
    text tokens come from its top-K text-to-text neighbours and its image tokens from its image-to-image ones; an
    image-only sample reads both modalities of its image-to-image neighbours, a text-only one those of its
    text-to-text neighbours; with three modalities a missing one comes from the summed cosines of the held ones, and
    each distinct channel is searched once. Catches RAGPT retrieving a complete sample by the summed score (REDEEM's
    eq. 1, which differs here), a missing modality read from its own absent channel, and channels swapped between
    modalities."""
    bank = _synthetic_bank()
    rng = np.random.default_rng(1)
    queries = {m: _unit(rng.normal(size=(3, d))) for m, d in (("text", 6), ("image", 5))}
    channels, channel_of = channel_table(ModalityPattern().present_matrix().numpy())
    assert channels.tolist() == [[1, 0], [0, 1]] and channel_of.tolist() == [[0, 1], [1, 1], [0, 0]]
    ids = _nearest(bank, queries, channels, ("text", "image"), 4, np.full(3, -1))[:, channel_of]
    cos = {m: queries[m] @ bank.arrays[f"query.{m}"].astype(np.float32).T for m in queries}
    top = {m: np.argsort(-c, axis=1)[:, :4] for m, c in cos.items()}
    assert ids.shape == (3, 3, 2, 4)  # samples, patterns (complete, missing_text, missing_image), modalities, K
    assert (ids[:, 0, 0] == top["text"]).all() and (ids[:, 0, 1] == top["image"]).all()
    assert (ids[:, 1] == top["image"][:, None]).all() and (ids[:, 2] == top["text"][:, None]).all()
    summed = np.argsort(-(cos["text"] + cos["image"]), axis=1)[:, :4]
    assert (ids[:, 0, 0] != summed).any() and (ids[:, 0, 1] != summed).any()
    present = ModalityPattern(tuple(THREE)).present_matrix().numpy()
    channels, channel_of = channel_table(present)
    assert len({tuple(c) for c in channels.tolist()}) == len(channels)
    for p, held in enumerate(present):
        for j, has in enumerate(held):
            assert (channels[channel_of[p, j]] == (np.eye(3)[j] if has else held)).all(), (p, j)


def test_multi_channel_retrieval_never_returns_a_copy_of_the_sample():
    """Item 8c with item 3 of issue 16: under RAGPT's multi-channel retriever a training sample with an exact
    duplicate in the bank retrieves neither row in any channel. Catches self-exclusion left to the eq. 1 path only."""
    bank = _synthetic_bank()
    for key in ("query.text", "query.image", "tokens.text", "tokens.image", "content_hash"):
        bank.arrays[key][7] = bank.arrays[key][3]
    bank.index = build_index(np.concatenate([bank.arrays["query.text"], bank.arrays["query.image"]], axis=1), "flat")
    queries = {m: bank.arrays[f"query.{m}"][[3]].astype(np.float32) for m in ("text", "image")}
    channels, channel_of = channel_table(ModalityPattern().present_matrix().numpy())
    ids = _nearest(bank, queries, channels, ("text", "image"), 4, bank.arrays["content_hash"][[3]])[:, channel_of]
    assert ids.shape == (1, 3, 2, 4) and not np.isin(ids, [3, 7]).any()


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


def test_bank_samples_read_their_stored_query_whatever_else_their_batch_holds(shapes_missing, cache, monkeypatch):
    """A retrieval batch mixing bank samples and others embeds only the others; the bank samples read their stored
    query vectors, as in a batch of bank samples only. Catches re-embedding every sample of a batch as soon as one is
    outside the bank: a bank sample's query (its neighbours, the router's condition) then depended on what else its
    batch held (a re-embedded vector can differ from the stored one in the last float16 bit: on the emoji data the
    image queries of a split retrieved in batches of 5 and of 32 differ by 6e-5)."""
    model, _, _ = _prepared("vilt", shapes_missing, cache)
    bank, embedded = memory_bank_of(model), []
    original = retrieval.embed_batch
    monkeypatch.setattr(retrieval, "embed_batch",
                        lambda wrapper, batch, available, n: embedded.append(len(available["text"]))
                        or original(wrapper, batch, available, n))
    mixed = concatenate_datasets([shapes_missing["train"].select(range(6)), shapes_missing["test"].select(range(2))])
    out = add_neighbors(mixed, model, MissingModalityCollator(tiny_processor("vilt")))
    rows = np.asarray(out["redeem_self"])
    assert embedded == [2] and (rows[:6] >= 0).all() and (rows[6:] == -1).all()
    for m in ("text", "image"):
        stored = bank.arrays[f"query.{m}"][rows[:6]].astype(np.float32)
        assert np.array_equal(np.asarray(out[f"redeem_query_{m}"])[:6], stored)
        assert (np.abs(np.asarray(out[f"redeem_query_{m}"])[6:]).sum(axis=1) > 0).all()


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


# ---- K modalities ----------------------------------------------------------------------------------------
def test_eq1_generalised_scores_are_the_sum_of_cosines_over_the_available_modalities_only():
    """Eq. 1 for K = 3: under each of the seven missing patterns a bank entry scores the sum of its cosines to the
    sample over the modalities the pattern keeps, and the neighbours are the top K of those scores. The samples'
    queries of every modality are real (non-zero) vectors here. Catches a search that still counts a missing
    modality (its placeholder's query not zeroed), one that keeps a single available modality (the paper's
    two-modality "image-only when the text is missing" taken literally), and the complete pattern's neighbours
    reused for every pattern."""
    bank = _synthetic_bank(widths=THREE)
    patterns = ModalityPattern(tuple(THREE))
    present = patterns.present_matrix().numpy()
    rng = np.random.default_rng(1)
    queries = {m: _unit(rng.normal(size=(3, d))) for m, d in THREE.items()}
    cosines = {m: queries[m] @ bank.arrays[f"query.{m}"].astype(np.float32).T for m in THREE}
    vectors = np.concatenate([bank.arrays[f"query.{m}"] for m in THREE], axis=1).astype(np.float32)
    scores = (pattern_queries(queries, present, tuple(THREE)) @ vectors.T).reshape(len(present), 3, -1)
    ids = _nearest(bank, queries, present, tuple(THREE), 4, np.full(3, -1))
    for code, keeps in enumerate(present):
        expected = sum(cosines[m] for m, kept in zip(THREE, keeps, strict=True) if kept)
        np.testing.assert_allclose(scores[code], expected, atol=1e-5, err_msg=patterns.names[code])
        assert (ids[:, code] == np.argsort(-expected, axis=1)[:, :4]).all(), patterns.names[code]


def test_eq2_4_each_modality_a_sample_misses_is_generated_from_the_mean_of_its_available_ones():
    """Eq. 2-4 for K = 3, on a sample with text only (missing image and audio) and one missing audio only: each
    missing modality m is generated from its own experts and retrieved tokens, routed by the mean over the sample's
    available modalities o of ``W_1^(o) q_o`` (eq. 2's condition generalised; ``W_1^(o)`` is o's block of W_1). The
    queries given for missing modalities are non-zero. Catches a condition that includes a missing modality's query,
    one that sums the available modalities' projections instead of averaging them, one built from the first other
    modality only (the two-modality ``other(m)``), and a generator that mixes another modality's experts."""
    modules = RedeemModules(THREE, {"joint": 8}, RedeemConfig(**TINY))
    for experts in modules.experts.values():
        for ffn in experts:
            torch.nn.init.normal_(ffn.out.weight)
    queries = {m: torch.randn(2, d) for m, d in THREE.items()}
    present = torch.tensor([[True, False, False], [True, True, False]])
    for m in ("image", "audio"):
        d, others = THREE[m], modules.others(m)
        experts, retrieved = torch.randn(2, 3, d), torch.randn(2, 3, 4, d)
        blocks = dict(zip(others, modules.w1[m].weight.split([THREE[o] for o in others], dim=1), strict=True))
        held = [[o for o in others if present[b, list(THREE).index(o)]] for b in range(2)]
        condition = torch.stack([sum(queries[o][b] @ blocks[o].T for o in held[b]) / len(held[b]) for b in range(2)])
        weights = ((modules.w2[m](experts) @ condition[..., None])[..., 0] / np.sqrt(d)).softmax(-1)
        expected = sum(weights[:, k, None, None] * modules.experts[m][k](retrieved[:, k]) for k in range(3))
        generated = modules.generate(m, modules.condition(m, queries, present), experts, retrieved)
        assert torch.allclose(generated, expected, atol=1e-5), m


def test_eq5_saim_prompt_of_a_modality_is_queried_by_every_other_modality():
    """Eq. 5-6 for K = 3: in each neighbour the retrieved image tokens and the retrieved audio tokens, each through
    its own block of f_Q, attend to the retrieved text tokens; all outputs are pooled to the text prompt. Catches
    queries from one other modality only (the two-modality ``other(m)``), from the prompted modality itself, and one
    query projection for modalities of different widths (image 6, audio 5)."""
    modules = RedeemModules(THREE, {"joint": 8}, RedeemConfig(**TINY, prompt_length=2))
    retrieved = {m: torch.randn(2, 3, 4, d) for m, d in THREE.items()}
    attention = modules.attention["text"]
    w_image, w_audio = attention.f_q.weight.split([6, 5], dim=1)
    q = torch.cat([retrieved["image"] @ w_image.T, retrieved["audio"] @ w_audio.T], dim=2) + attention.f_q.bias
    k, v = attention.f_k(retrieved["text"]), attention.f_v(retrieved["text"])
    values = ((q @ k.transpose(-1, -2)) / np.sqrt(8)).softmax(-1) @ v  # eq. 6 per neighbour: [2, 3, 8, 8]
    expected = values.reshape(2, 24, 8).reshape(2, 2, 12, 8).mean(2)  # adaptive pooling of 24 outputs to 2
    assert torch.allclose(modules.saim_prompt("text", retrieved), expected, atol=1e-5)


def test_intra_prompt_sees_neither_padding_nor_the_order_of_the_targets_tokens():
    """Table 3 "Intra-modal" / RAGPT's CAP as implemented (layer.py deviation): the retrieved tokens attend to the
    target's valid tokens (eq. 6 with the target's padding masked out of the keys), pooled to the prompt. Catches a
    prompt that pools over or attends to padding (RAGPT's released CAP: a sample's prompt then depends on its batch's
    longest text and on ViLT's padded patches) and one pooled along the target's token order, which ViLT draws at
    random on every forward."""
    modules = RedeemModules({"text": 8, "image": 6}, {"joint": 8}, RedeemConfig(**TINY, prompter="intra"))
    target, retrieved = torch.randn(1, 5, 8), torch.randn(1, 3, 4, 8)
    attention = modules.attention["text"]
    q, k, v = attention.f_q(retrieved.flatten(1, 2)), attention.f_k(target), attention.f_v(target)
    expected = (((q @ k.transpose(-1, -2)) / np.sqrt(8)).softmax(-1) @ v).reshape(1, 2, 6, 8).mean(2)
    alone = modules.intra_prompt("text", target, retrieved)
    assert torch.allclose(alone, expected, atol=1e-6)
    padded = torch.cat([target[:, :2], torch.randn(1, 3, 8), target[:, 2:]], dim=1)
    valid = torch.tensor([[True, True, False, False, False, True, True, True]])
    assert torch.allclose(modules.intra_prompt("text", padded, retrieved, valid), alone, atol=1e-6)
    assert torch.allclose(modules.intra_prompt("text", target[:, torch.randperm(5)], retrieved), alone, atol=1e-6)


def test_content_hashes_cover_every_modality_and_keep_the_two_modality_values():
    """The bank's content hash (a training sample's identity: self-exclusion from eq. 1's neighbours, the
    reconstruction target). Catches a hash of text and image only (two training samples that differ only in their
    audio would share a bank row: one would be excluded from the other's neighbours and trained towards the other's
    tokens) and a two-modality hash that differs from the one in banks saved before (blake2b of the text, then the
    image's mode, size and pixels)."""
    image = Image.new("RGB", (4, 4), (10, 20, 30))
    before = hashlib.blake2b(b"red circle", digest_size=8)
    before.update(f"{image.mode}{image.size}".encode())
    before.update(image.tobytes())
    pair = content_hashes({"text": ["red circle", None], "image": [image, image]})
    assert pair.tolist() == [int.from_bytes(before.digest(), "little") >> 1, -1]
    three = content_hashes({"text": ["a", "a"], "image": [image, image], "audio": [[[0.0, 1.0]], [[0.0, 2.0]]]})
    assert (three >= 0).all() and three[0] != three[1]


def test_fused_audio_generates_every_modality_a_sample_misses_and_only_there(triple, cache):
    """Eq. 4 and eq. 7's ``H_0 = E_hat`` on the text + image + audio backbone: a sample gets a generated block for
    every modality it lacks (two of three for "missing_text_audio"), and no other sample sees that block. Changing
    one modality's experts must change exactly the logits of the samples that miss it. Catches generation of one
    modality per sample (the two-modality ``other(m)``), a block shown to samples that hold the modality, and a
    block put before another modality's tokens."""
    model, train, collator = _prepared_audio(triple, cache)
    model.eval()
    batch = collator(_one_per_pattern(train))
    present = model.patterns.present(batch["missing_type"])
    modules = model.method_pool.redeem_modules["default"]
    with torch.no_grad():
        reference = model(**batch).logits
        for j, m in enumerate(model.patterns.modalities):
            bias = modules.experts[m][0].out.bias
            saved = bias.clone()
            bias.add_(torch.randn_like(bias))
            changed = model(**batch).logits
            bias.copy_(saved)
            assert torch.allclose(changed[present[:, j]], reference[present[:, j]], atol=1e-5), m
            assert ((changed - reference).abs().amax(-1)[~present[:, j]] > 1e-4).all(), m


@pytest.mark.parametrize("options", [
    {"generator": "cross_modal"}, {"generator": "mean", "prompter": "intra", "label_token": True},
    {"prompter": "static"}, {"retrieval": "none", "prompter": "none"},
])
def test_table3_switches_run_and_train_on_three_modalities(triple, cache, options):
    """The Table 3 variants on the text + image + audio backbone, with every missing pattern in one batch. Catches a
    variant still written for two modalities (a cross-modal generator sized for one other modality fails on the
    condition's width, eq. 2) and one whose tensors get no gradient under three modalities."""
    model, train, collator = _prepared_audio(triple, cache, **options)
    out = model(**collator(_one_per_pattern(train)))
    out.loss.backward()
    trained = [p for n, p in model.named_parameters() if "redeem_modules" in n]
    assert trained and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


def test_generated_tokens_do_not_depend_on_the_missing_inputs_placeholder(triple, cache):
    """Eq. 2-4 read only the available modalities: the tokens generated for a missing modality stay bit-identical
    when the missing slots of the batch (inputs and query vectors) hold real content instead of the placeholder and
    zeros ("mask" policy, which accepts such slots). Catches a router condition read from a missing modality's query
    vector without masking it by the sample's presence (batches not built by RedeemCollator carry it) and one built
    from the sample's first-layer tokens, placeholder included."""
    model, train, collator = _prepared_audio(triple, cache, policy="mask")
    model.eval()
    batch = collator(_one_per_pattern(train))
    present = model.patterns.present(batch["missing_type"])
    captured = _capture_generated(model)
    with torch.no_grad():
        model(**batch)
        reference = dict(captured)
        filled = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        for j, spec in enumerate(model.interface.inputs):
            absent, donor = ~present[:, j], int(present[:, j].nonzero()[0])
            for name in spec.input_names:
                if name in filled:
                    filled[name][absent] = batch[name][donor]
            query = filled[f"redeem_query_{spec.name}"]
            query[absent] = torch.randn_like(query[absent])
        model(**filled)
    assert set(reference) == set(captured) == set(AUDIO_MODALITIES)
    for m in AUDIO_MODALITIES:
        assert torch.equal(captured[m], reference[m]), m


# ---- two modalities: the numbers before the generalisation ------------------------------------------------
REFERENCE_CASES = {
    "vilt-redeem": ("vilt", "redeem", {}),
    "clip-redeem": ("clip", "redeem", {}),
    "vilt-cross_modal-static": ("vilt", "redeem", {"generator": "cross_modal", "prompter": "static"}),
    "clip-ragpt-saim": ("clip", "ragpt", {"prompter": "saim", "retrieval": "msa"}),  # eq. 1: RAGPT's before 8c
    "vilt-random-mean": ("vilt", "redeem", {"retrieval": "random", "generator": "mean", "prompter": "none"}),
}
REFERENCE_LOGITS = {  # computed at commit f482799, before REDEEM took K modalities
    "vilt-redeem": [
        [-0.460126, -0.529298, 0.701622, -0.557104],
        [-0.695889, -0.076439, 0.795709, -0.527601],
        [-0.769049, -0.292812, 0.776681, -0.406625],
        [-0.618813, -0.758537, 0.794684, -0.649608],
        [-0.693834, -0.543665, 0.798650, -0.362835],
        [-0.634938, -1.147086, 0.949868, -0.661906],
    ],
    "clip-redeem": [
        [-1.092013, -0.186250, -0.650223, -0.047651],
        [-0.526561, -0.118373, -0.812594, 0.410131],
        [-1.166034, -0.417106, -0.395164, 0.141874],
        [-0.861443, 0.237768, -0.806433, -0.110260],
        [-1.030628, -0.266860, -0.660690, 0.071856],
        [-0.520633, -0.126998, -0.867152, 0.304017],
    ],
    "vilt-cross_modal-static": [
        [-0.500574, -0.560317, 0.745951, -0.645884],
        [-0.704839, 0.298527, -0.012738, -0.514647],
        [-0.708036, -0.337497, 0.621567, -0.272215],
        [-0.415711, -0.266836, 0.805281, -0.673499],
        [-0.616921, -0.215810, 0.669012, -0.370499],
        [-0.665052, 0.179471, 0.368814, -0.453669],
    ],
    "clip-ragpt-saim": [
        [-1.139060, 0.075449, -0.423487, 0.178983],
        [-0.618080, 0.188140, -0.347657, 0.356357],
        [-1.027254, -0.003754, -0.279384, 0.314400],
        [-0.958839, 0.609383, -0.729200, 0.066343],
        [-1.228682, -0.046480, -0.385914, 0.202174],
        [-0.695188, 0.109887, -0.478554, 0.210616],
    ],
    "vilt-random-mean": [
        [-0.443667, -0.524644, 0.693703, -0.581832],
        [-0.688068, -0.145475, 0.729796, -0.768083],
        [-0.555392, -0.116567, 0.662556, -0.302801],
        [-0.172661, -0.169761, 0.597826, -0.812622],
        [-0.619380, -0.281771, 0.685946, -0.342620],
        [-0.619937, -0.098326, 0.794047, -0.679048],
    ],
}


@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_two_modality_logits_are_those_from_before_the_k_modality_generalisation(shapes_missing, tmp_path, case):
    """K = 2 regression: with fixed seeds, the logits of six training samples (all three patterns) equal those the
    two-modality implementation gave (commit f482799) for CMoE + SAIM (eq. 2-6) on ViLT and CLIP, the cross-modal
    generator with static prompts, RAGPT's mean generator and label token with SAIM prompts (on eq. 1's neighbours,
    which RAGPT retrieved before it had its own multi-channel retriever), and random retrieval.
    Catches a generalisation that changes the paper's two-modality maths (a condition scaled or summed differently,
    queries or keys from another modality, parameters created in another order or shape). RAGPT's intra-modal prompts
    are left out: they changed on purpose (padding, ViLT's patch order; layer.py). The two ViLT cases were pinned
    again when the bank came to be embedded in eval mode (ViLT's patches in raster order, not the order drawn in
    training mode, so the pooled bank tokens are other mixes of patches; the CLIP cases, whose bank did not change,
    still hold the values of commit f482799)."""
    backbone, method, options = REFERENCE_CASES[case]
    torch.manual_seed(0)
    model = make_model(backbone, method, **TINY, **options)
    collator = MissingModalityCollator(tiny_processor(backbone))
    train, collator = prepare_for_training(model, shapes_missing["train"], collator, cache_dir=tmp_path)
    torch.manual_seed(2)
    perturbed(model)
    torch.manual_seed(1)
    with torch.no_grad():
        logits = model(**collator([train[i] for i in range(6)])).logits
    torch.testing.assert_close(logits, torch.tensor(REFERENCE_LOGITS[case]), atol=2e-6, rtol=0)


# ---- loss ----------------------------------------------------------------------------------------------
def test_reconstruction_term_is_the_mse_against_the_dropped_modality(shapes_missing, cache):
    model, train, collator = _prepared("vilt", shapes_missing, cache)
    batch = collator([train[i] for i in range(12)])
    captured = {}
    modules = model.method_pool.redeem_modules["default"]
    original = modules.generate
    modules.generate = lambda m, *a: captured.setdefault(m, original(m, *a))
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
    modules = model.method_pool.redeem_modules["default"]
    with torch.no_grad():
        modules.experts["text"][0].out.bias.add_(torch.randn(32))  # changes the generated text only
    torch.manual_seed(1)
    changed = model(**batch).logits
    has_text = batch["missing_type"] != 1
    assert torch.allclose(changed[has_text], reference[has_text], atol=1e-5)
    assert not torch.allclose(changed[~has_text], reference[~has_text])


# ---- ablations, RAGPT ------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [
    {"retrieval": "random"}, {"retrieval": "none"}, {"generator": "cross_modal"}, {"generator": "mean"},
    {"generator": "none"}, {"prompter": "static"}, {"prompter": "intra"}, {"prompter": "none"},
    {"label_token": True, "prompt_layer": 0}, {"retrieval": "mcr", "label_token": True},
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


def _load_matching(target, source) -> None:
    """Copy into ``target`` every tensor of ``source`` with the same name and shape (the backbone, the head and the
    REDEEM modules two variants share), so that their logits differ only by what the switch changes."""
    own = target.state_dict()
    target.load_state_dict({k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape},
                           strict=False)


@pytest.mark.parametrize(("options", "only_missing"), [
    ({"retrieval": "random"}, False), ({"retrieval": "none"}, False), ({"generator": "mean"}, True),
    ({"generator": "cross_modal"}, True), ({"generator": "none"}, True), ({"prompter": "intra"}, False),
    ({"prompter": "static"}, False), ({"prompter": "none"}, False), ({"label_token": True}, False),
], ids=lambda value: "-".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else None)
def test_each_table3_switch_moves_the_logits(shapes_missing, cache, options, only_missing):
    """Every Table 3 switch changes what the model computes: with all shared tensors equal to the full REDEEM
    model's, the switched variant's logits differ, and a generator switch moves only the samples that miss a
    modality (complete samples never see a generated block). Mutations killed: any switch silently ignored
    (``retrieval="random"`` or ``"none"`` searching as "msa", a generator or prompter variant falling back to the
    default), and a generator that reaches complete samples."""
    full, train, collator = _prepared("vilt", shapes_missing, cache)
    variant, variant_train, variant_collator = _prepared("vilt", shapes_missing, cache, **options)
    perturbed(full)
    perturbed(variant)
    _load_matching(variant, full)
    with torch.no_grad():
        torch.manual_seed(1)
        reference = full(**collator([train[i] for i in range(12)])).logits
        torch.manual_seed(1)
        batch = variant_collator([variant_train[i] for i in range(12)])
        logits = variant(**batch).logits
    moved = (logits - reference).abs().amax(-1) > 1e-5
    complete = batch["missing_type"] == 0
    assert moved[~complete].all()
    assert moved[complete].any() != only_missing


def test_random_retrieval_draws_seeded_bank_rows_other_than_the_sample(shapes_missing, cache):
    """Table 3 "Random": each sample's K neighbours are ``default_rng([seed, index]).choice(N, K + 1)`` without its
    own row, the same for every missing pattern, and not eq. 1's. Mutation killed: ``retrieval="random"`` silently
    running the MSA search."""
    model, train, _ = _prepared("vilt", shapes_missing, cache, retrieval="random")
    _, searched, _ = _prepared("vilt", shapes_missing, cache)
    size, neighbours = len(memory_bank_of(model)), np.asarray(train["redeem_neighbors"])
    for index, (row, self_row) in enumerate(zip(neighbours, train["redeem_self"], strict=True)):
        drawn = np.random.default_rng([0, index]).choice(size, 4, replace=False)
        assert (row == drawn[drawn != self_row][:3]).all()
    assert not np.array_equal(neighbours, np.asarray(searched["redeem_neighbors"]))


def test_router_reads_the_available_modalitys_query(shapes_missing, cache):
    """Eq. 2-3 recomputed from the batch on ViLT: a sample missing its text is generated with routing weights
    ``softmax(W_2 E_r,k · W_1 q_image / sqrt(d))`` from its image query and its neighbours' text queries, then
    eq. 4's weighted sum of the experts. Mutation killed: the router conditioned on the missing modality's own
    (zeroed) query, which makes the weights uniform."""
    model, train, collator = _prepared("vilt", shapes_missing, cache)
    perturbed(model)
    batch = collator([train[i] for i in range(12)])
    captured = _capture_generated(model)
    with torch.no_grad():
        model(**batch)
        missing = batch["missing_type"] == 1
        modules, bank = model.method_pool.redeem_modules["default"], memory_bank_of(model)
        rows = batch["redeem_neighbors"][missing, :3]
        experts, retrieved = bank.lookup("query.text", rows), bank.lookup("tokens.text", rows)
        condition = batch["redeem_query_image"][missing] @ modules.w1["text"].weight.T
        weights = ((experts @ modules.w2["text"].weight.T) @ condition[..., None])[..., 0].div(np.sqrt(32)).softmax(-1)
        expected = sum(weights[:, k, None, None] * modules.experts["text"][k](retrieved[:, k]) for k in range(3))
    assert missing.any() and weights.std(-1).min() > 1e-3
    torch.testing.assert_close(captured["text"][missing], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("policy", ["mask", "zero"])
def test_clip_generation_under_a_policy_that_drops_the_missing_feature_is_refused(shapes_missing, cache, policy):
    """Item 1 of issue 16: on CLIP the "mask" and "zero" policies leave a missing modality's pooled feature out of
    the fused representation, so the generated tokens (eq. 4, in that modality's tower) never reach the logits and
    only the reconstruction term trains the generator. Such a forward is a clear error naming missing_policy='dummy'.
    Catches the silent run (every expert could be changed without moving a logit)."""
    model, train, _ = _prepared("clip", shapes_missing, cache)
    collator = RedeemCollator(MissingModalityCollator(tiny_processor("clip"), policy=policy))
    with pytest.raises(ValueError, match="missing_policy='dummy'"):
        model(**collator([train[i] for i in range(8)]))
    ragpt_none, train_none, _ = _prepared("clip", shapes_missing, cache, generator="none")
    assert torch.isfinite(ragpt_none(**collator([train_none[i] for i in range(8)])).logits).all()


def test_without_retriever_nothing_comes_from_the_neighbours(shapes_missing, cache):
    """Items 5 and 8 of issue 16, Table 3 "w/o Retriever": no neighbour search runs (the neighbour columns hold -1),
    the retrieved features are noise with the bank's overall mean and spread, and RAGPT's label token is the mean of
    all label embeddings (no neighbour's label). Catches the "w/o retriever" ablation that still reads the real
    neighbours' labels (92% of them equal the sample's own label) or their features' statistics."""
    model, train, collator = _prepared("vilt", shapes_missing, cache, method="ragpt", retrieval="none")
    assert (np.asarray(train["redeem_neighbors"]) == -1).all()
    modules, tokens = model.method_pool.ragpt_modules["default"], []
    original = modules.label_token
    modules.label_token = lambda stream, labels: tokens.append(original(stream, labels)) or tokens[-1]
    with torch.no_grad():
        model(**collator([train[i] for i in range(8)]))
        expected = modules.label_embeddings["joint"].mean(dim=0)
    (token,) = tokens
    torch.testing.assert_close(token[:, 0], expected.expand(8, -1))


def test_ragpt_is_the_no_router_intra_modal_variant_with_a_label_token(shapes_missing, cache):
    model, train, collator = _prepared("clip", shapes_missing, cache, method="ragpt")
    config = model.peft_config["default"]
    assert (config.generator, config.prompter, config.label_token, config.recon_weight) == ("mean", "intra", True, 0)
    assert any("ragpt_modules.default.label_embeddings" in n for n, _ in model.named_parameters())
    assert model(**collator([train[i] for i in range(8)])).aux_loss is None


def test_ragpt_reads_each_modality_of_a_complete_sample_from_its_own_channel(shapes_missing, cache):
    """Item 8c in the forward: RAGPT retrieves with its multi-channel retriever by default; a complete sample's text
    tokens (its intra-modal prompt's keys) are those of its text-to-text neighbours and its image tokens those of its
    image-to-image neighbours, found by each modality's cosine alone; the label token counts the neighbours of every
    modality the sample holds (both channels' for a complete sample, the one channel's for an incomplete one). Catches
    RAGPT's summed-score retrieval for complete samples, a layer that reads every modality from one neighbour list,
    and a label token that counts the channel of a modality the sample lacks."""
    model, train, collator = _prepared("vilt", shapes_missing, cache, method="ragpt")
    assert model.peft_config["default"].retrieval == "mcr"
    bank, modules = memory_bank_of(model), model.method_pool.ragpt_modules["default"]
    retrieved, labels = {}, []
    intra, label_token = modules.intra_prompt, modules.label_token

    def record(modality, target, tokens, valid=None):
        retrieved[modality] = tokens
        return intra(modality, target, tokens, valid)

    modules.intra_prompt = record
    modules.label_token = lambda stream, values: labels.append(values) or label_token(stream, values)
    features = [train[i] for i in range(12)]
    batch = collator(features)
    with torch.no_grad():
        model(**batch)
    rows, present = batch["redeem_neighbors"], ModalityPattern().present_matrix()[batch["missing_type"]]
    assert rows.shape == (12, 2, 3) and (batch["missing_type"] == 0).any()
    for b, f in enumerate(features):
        assert rows[b].tolist() == f["redeem_neighbors"][f["missing_type"]]
        expected = [bank.lookup("labels", rows[b, j]) * present[b, j] for j in range(2)]
        assert torch.equal(labels[0][b], torch.cat(expected))
        for j, m in enumerate(("text", "image")):
            assert torch.equal(retrieved[m][b], bank.lookup(f"tokens.{m}", rows[b, j])), (b, m)
    sample = next(f for f in features if f["missing_type"] == 0)
    for j, m in enumerate(("text", "image")):
        query = bank.arrays[f"query.{m}"].astype(np.float32)
        scores = query @ query[sample["redeem_self"]]
        scores[sample["redeem_self"]] = -np.inf
        np.testing.assert_allclose(np.sort(scores[sample["redeem_neighbors"][0][j]]), np.sort(scores)[-3:], atol=1e-6)
    assert sample["redeem_neighbors"][0][0] != sample["redeem_neighbors"][0][1]


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


@pytest.mark.parametrize("method", ["redeem", "ragpt"])
def test_reloaded_model_retrieves_and_predicts_a_new_split_bit_identically(shapes_missing, tmp_path, method,
                                                                            batch_sensitive_images):
    """Item 10: after save_pretrained and AutoModel.from_pretrained, a reloaded REDEEM / RAGPT adapter that retrieves
    a held-out split anew (query vectors, neighbours) gives torch.equal logits, on the fused backbone whose image
    encoder rounds by batch size as EfficientNet-Lite0 does on oneDNN. The trained process met the test images in one
    batch of 36 (another method's prediction pass on the demo's shared feature cache); the reloaded one meets them in
    the retrieval's batches of 32 and 4 samples (each twice: the query of each modality is embedded alone). Catches
    the image encoder run on each call's uncached images as one batch of whatever size (the cache kept the bits of
    the first batch an image met: 2e-6 to 5e-6 on the emoji logits, through the image tokens and the image query of
    the last retrieval batch's samples), and a reload whose bank, index, query vectors or neighbours differ from
    those the trained model used."""
    tiny_backbone("fused").save_pretrained(tmp_path / "base")
    model = AutoModel.from_pretrained(tmp_path / "base", adapter=method, adapter_options=TINY, num_labels=4)
    collator = MissingModalityCollator(tiny_processor("fused"), modalities=model.interface.inputs)
    _, redeem_collator = prepare_for_training(model, shapes_missing["train"], collator, cache_dir=tmp_path / "banks")
    perturbed(model)
    test = shapes_missing["test"].select(range(36))
    with torch.no_grad():
        model.backbone.embeddings.image_features(collator([{**f, "missing_type": 0} for f in test])["pixel_values"])
    logits = _split_logits(model, evaluation_neighbors(test, model, collator), redeem_collator)
    model.save_pretrained(tmp_path / "adapter")
    loaded = AutoModel.from_pretrained(tmp_path / "adapter").eval()
    reloaded = evaluation_neighbors(test, loaded, collator)
    assert torch.equal(_split_logits(loaded, reloaded, redeem_collator), logits)


def _split_logits(model, dataset, collator) -> torch.Tensor:
    with torch.no_grad():
        return model(**collator(list(dataset))).logits


def test_bank_build_is_cached_by_fingerprint(shapes_missing, cache):
    model = make_model("vilt", "redeem", **TINY)
    collator = MissingModalityCollator(tiny_processor("vilt"))
    first = build_memory_bank(model, shapes_missing["train"], collator, num_tokens=4, cache_dir=cache)
    again = build_memory_bank(model, shapes_missing["train"], collator, num_tokens=4, cache_dir=cache)
    assert first.key == again.key and isinstance(again.arrays["query.text"], np.memmap)
    other = build_memory_bank(model, shapes_missing["train"].select(range(50)), collator, num_tokens=4,
                              cache_dir=cache)
    assert other.key != first.key and len(other) == 50


def test_bank_cache_key_reads_the_frozen_weights_and_the_data_only(shapes_missing):
    """Item 6 of issue 16: the bank's cache key hashes the frozen backbone weights (under their unwrapped names) and
    the data, not the trained copies of the pooler, nor the adapter's tensors: training, or adding the adapter to
    the same backbone, keeps the key; changing a frozen weight changes it. Catches a key over the whole
    ``backbone.state_dict()`` (it almost never hit the cache)."""
    collator = MissingModalityCollator(tiny_processor("vilt"))

    def key(model):
        return bank_fingerprint(model, [shapes_missing["train"]], collator, 4, "auto")

    plain = make_model("vilt", None)
    adapted = copy.deepcopy(plain)
    adapted.add_adapter(hf_missing.get_method_config("redeem", **TINY))
    before = key(adapted)
    assert key(plain) == before
    perturbed(adapted)
    assert key(adapted) == before
    with torch.no_grad():
        plain.backbone.encoder.layer[0].output.dense.weight.add_(1.0)
    assert key(plain) != before


def test_neighbours_serve_the_largest_k_of_the_models_adapters(shapes_missing, cache):
    """Item 8 of issue 16: ``add_neighbors`` retrieves as many neighbours as the model's largest ``num_retrieved``
    (each adapter reads its first K); adapters that disagree on the retrieval mode are a clear error. Catches the
    first adapter's K serving every adapter."""
    model = make_model("vilt", "redeem", **TINY)
    model.add_adapter(hf_missing.get_method_config("redeem", **{**TINY, "num_retrieved": 5}), adapter_name="wide")
    collator = MissingModalityCollator(tiny_processor("vilt"))
    train, _ = prepare_for_training(model, shapes_missing["train"], collator, cache_dir=cache)
    assert np.asarray(train["redeem_neighbors"]).shape[1:] == (3, 5)
    model.add_adapter(hf_missing.get_method_config("redeem", **{**TINY, "retrieval": "random"}), adapter_name="rnd")
    attach_memory_bank(model, model.peft_config["default"].memory_bank)
    with pytest.raises(ValueError, match="retrieval"):
        add_neighbors(shapes_missing["test"], model, collator)


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


def test_evaluating_the_banks_own_data_is_refused_whatever_the_split_is_called(shapes_missing, cache):
    """Item 4 of issue 16: the guard against a bank built from evaluation data reads more than ``Dataset.split``. A
    test split made with ``from_dict`` (``split=None``) used to build the bank is refused when it is evaluated (its
    fingerprint is the bank's training source), and so is a split whose samples all sit in the bank under another
    fingerprint (a re-made copy). Validation data given to the bank as validation, and a held-out test split, are
    evaluated. Catches a guard by the split's name alone."""
    collator = MissingModalityCollator(tiny_processor("vilt"))
    unnamed = Dataset.from_dict(shapes_missing["test"][:12], features=shapes_missing["test"].features)
    model = make_model("vilt", "redeem", **TINY)
    _, redeem_collator = prepare_for_training(model, unnamed, collator, cache_dir=cache)
    with pytest.raises(BankError, match="was built from this very split"):
        hf_missing.methods.prepare_for_evaluation(model, unnamed, redeem_collator)
    model, _, redeem_collator = _prepared("vilt", shapes_missing, cache)
    copy = Dataset.from_dict(shapes_missing["train"][:8], features=shapes_missing["train"].features)
    with pytest.raises(BankError, match="all 8 samples of the split to evaluate are in the memory bank"):
        hf_missing.methods.prepare_for_evaluation(model, copy, redeem_collator)
    assert len(hf_missing.methods.prepare_for_evaluation(model, shapes_missing["test"], redeem_collator)) == 48
    validation = shapes_missing["test"].select(range(10))
    model = make_model("vilt", "redeem", **TINY)
    prepare_for_training(model, shapes_missing["train"], collator, validation=validation, cache_dir=cache)
    assert len(hf_missing.methods.prepare_for_evaluation(model, validation, redeem_collator)) == 10


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


def test_the_bank_is_embedded_in_eval_mode_whatever_the_callers_mode():
    """Catches bank and query embeddings computed in the caller's mode: a model fresh from ``from_backbone`` is in
    training mode, so the frozen backbone's dropout made two builds of one bank (and every retrieval query) differ
    by up to 0.3 on the tiny fused backbone. The caller's mode is restored afterwards."""
    from hf_missing.methods.redeem.bank import embed_batch

    model = MissingModalityForClassification.from_backbone(tiny_backbone("fused"), num_labels=4).train()
    rows = shapes_dataset(n_train=6, n_test=2, seed=0)["train"]
    batch = MissingModalityCollator(tiny_processor("fused"), modalities=model.interface.inputs)(
        [{**rows[i], "missing_type": 0} for i in range(6)])
    available = {m: np.ones(6, dtype=bool) for m in model.patterns.modalities}
    first, second = (embed_batch(model, batch, available, 2) for _ in range(2))
    assert all(torch.equal(first.query[m], second.query[m]) for m in first.query)
    assert all(torch.equal(first.tokens[m], second.tokens[m]) for m in first.tokens)
    assert model.training and model.interface.model.encoder.training


# ---- guards added after the mutation run (benchmarks/results/mutation.md) ---------------------------------
def _ctx(present, **fields) -> ForwardContext:
    present = torch.tensor(present, dtype=torch.bool)
    return ForwardContext(torch.zeros(len(present)), present, ("text", "image"), **fields)


def test_without_retriever_the_noise_has_the_banks_mean_and_spread():
    """Table 3 "w/o Retriever": the retrieved features are ``randn * std + mean`` with the bank's overall statistics.
    Guards: _noise mutants 5 (``- mean``) and 6 (``/ std``)."""
    bank = _synthetic_bank()
    bank.arrays["tokens.text"] = (bank.arrays["tokens.text"] * 3 + 2).astype(np.float16)
    mean, std = bank.spread("tokens.text")
    assert abs(mean - 2) < 0.5 and abs(std - 3) < 0.5
    torch.manual_seed(0)
    noise = redeem_layer._noise(bank, "tokens.text", torch.zeros(2, 3, dtype=torch.long))
    torch.manual_seed(0)
    assert noise.shape == (2, 3, 4, 6) and torch.allclose(noise, torch.randn(2, 3, 4, 6) * std + mean)


def test_without_retriever_the_run_reads_noise_not_the_banks_rows():
    """With ``retrieval="none"`` the run's retrieved tokens are the noise (the neighbour ids are -1, which would read
    the bank's last row). Guards: redeem_run mutants 25 and 26 (the "none" test never true)."""
    bank = _synthetic_bank()
    config = RedeemConfig(**TINY, retrieval="none", generator="none")
    config.memory_bank = bank
    modules = RedeemModules({"text": 6, "image": 5}, {"joint": 6}, config)
    rows = torch.full((2, 3), -1)
    torch.manual_seed(0)
    run = redeem_layer.redeem_run("default", config, modules, _ctx([[1, 1], [1, 0]], batch={"redeem_neighbors": rows}))
    torch.manual_seed(0)
    assert torch.equal(run.retrieved["text"], redeem_layer._noise(bank, "tokens.text", rows))


def test_reconstruction_term_includes_the_banks_first_row_and_is_filed_under_the_adapter():
    """The reconstruction MSE covers every sample that misses the modality and is in the bank, row 0 included (-1:
    not in the bank), and lands in ``aux_losses`` under ``redeem_reconstruction/<adapter>``. Guards:
    _reconstruction_loss mutants 12 and 13 (``self_rows > 0`` / ``>= 1``), redeem_run mutants 81 and 100 and
    RedeemLayer.start_run mutant 7 (the adapter's name lost)."""
    bank = _synthetic_bank()
    config = RedeemConfig(**TINY, generator="mean", prompter="none")
    config.memory_bank = bank
    modules = RedeemModules({"text": 6, "image": 5}, {"joint": 6}, config)
    batch = {"redeem_neighbors": torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]]),
             "redeem_self": torch.tensor([0, -1, 9]), "redeem_query_text": torch.randn(3, 6),
             "redeem_query_image": torch.randn(3, 5)}
    ctx = _ctx([[1, 0], [1, 0], [1, 1]], batch=batch)
    layer = SimpleNamespace(interface=None, method_config={"mine": config}, shared=lambda adapter: modules)
    run = RedeemLayer.start_run(layer, "mine", ctx)
    expected = F.mse_loss(run.generated["image"][:1], bank.lookup("tokens.image", torch.tensor([0])))
    assert run.adapter == "mine" and set(ctx.aux_losses) == {"redeem_reconstruction/mine"}
    torch.testing.assert_close(ctx.aux_losses["redeem_reconstruction/mine"], expected)


def test_redeem_run_errors_name_the_calls_that_fix_them():
    """No bank: the error names prepare_for_training and load_memory_bank; no neighbours in the batch: it names
    add_neighbors and RedeemCollator. Guards: redeem_run mutants 4, 5, 7, 8, 11, 12 and 14-16 (message text)."""
    config = RedeemConfig(**TINY)
    with pytest.raises(RuntimeError, match=r"^This REDEEM adapter has no memory bank: call hf_missing\.methods\.redeem"
                                           r"\.prepare_for_training\(model, train_dataset, collator\) \(or "
                                           r"load_memory_bank\(model, folder\)\)\.$"):
        redeem_layer.redeem_run("default", config, None, _ctx([[1, 1]]))
    config.memory_bank = _synthetic_bank()
    with pytest.raises(ValueError, match=r"^REDEEM needs each sample's retrieved neighbours: add them with hf_missing"
                                         r"\.methods\.redeem\.add_neighbors\(dataset, model, collator\) and batch with "
                                         r"RedeemCollator\(collator\)\.$"):
        redeem_layer.redeem_run("default", config, None, _ctx([[1, 1]]))


def _interface(*streams):
    """A backbone interface stand-in with ``streams`` (each a tuple of modalities)."""
    owner = {m: SimpleNamespace(modalities=s) for s in streams for m in s}
    return SimpleNamespace(model_type="fake", streams=streams, stream_of=owner.__getitem__)


def test_generation_is_refused_only_for_a_modality_alone_in_its_stream():
    """check_policy under the "mask" policy refuses generation for a modality that has a stream of its own (its
    pooled feature leaves the fusion), names it and the ways out, and lets a backbone pass whose streams each hold
    several modalities. Guards: check_policy mutants 9 (``and`` -> ``or``: every modality of a multi-stream backbone
    counted as alone), 15 (``alone[1]``) and 16-22 (message text)."""
    config = RedeemConfig(**TINY)
    four = ("text", "image", "audio", "video")
    ctx = ForwardContext(torch.zeros(1), torch.ones(1, 4, dtype=torch.bool), four, policy="mask")
    redeem_layer.check_policy(_interface(("text", "image"), ("audio", "video")), config, ctx)
    ctx = ForwardContext(torch.zeros(1), torch.ones(1, 3, dtype=torch.bool), four[:3], policy="mask")
    with pytest.raises(ValueError, match=r"this fake backbone leaves the pooled feature of a missing 'audio' \(its own "
                                         r"stream\) out of the fused representation, so the generated tokens would "
                                         r"never reach the logits\. Batch with missing_policy='dummy' \(the generated "
                                         r"block stands in for the hidden placeholder\), or pass generator='none'\.$"):
        redeem_layer.check_policy(_interface(("text", "image"), ("audio",)), config, ctx)


def test_label_embedding_rows_are_the_multi_label_classes_or_at_least_two():
    """RAGPT's label embedding has one row per class of a multi-label task, and at least 2 otherwise (a binary task
    with one logit). Guards: num_label_classes mutants 7-15 and 20."""
    rows = redeem_layer.num_label_classes
    assert rows({}) == 2 and rows({"num_labels": 1}) == 2 and rows({"num_labels": 2}) == 2
    assert rows({"num_labels": 5}) == 5 and rows({"num_labels": 1, "problem_type": "multi_label_classification"}) == 1


def test_router_diagnostic_is_the_mean_largest_weight_and_absent_before_a_forward():
    """``router_max_weight``: the largest routing weight of each sample, averaged over the batch; no entry before any
    generation. Guards: RedeemModules.__init__ mutant 86 and diagnostics mutant 1 (an entry before any forward) and
    generate mutant 16 (the maximum taken over the batch)."""
    modules = RedeemModules({"text": 8, "image": 6}, {"joint": 8}, RedeemConfig(**TINY, generator="cmoe"))
    assert modules.diagnostics() == {}
    torch.nn.init.normal_(modules.w1["text"].weight)
    condition, experts, retrieved = torch.randn(5, 6), torch.randn(5, 3, 8), torch.randn(5, 3, 4, 8)
    modules.generate("text", condition, experts, retrieved)
    weights = modules.route("text", condition, experts)
    assert modules.diagnostics() == {"router_max_weight": pytest.approx(weights.max(-1).values.mean().item())}


def test_label_token_is_the_label_embeddings_averaged_over_the_neighbours_labels():
    """RAGPT's label token: the label embeddings weighted by how often each class occurs among the neighbours (all-zero
    rows count for nothing); one labelled neighbour gives its label's embedding. Guards: label_token mutant 14
    (``clamp(min=2.0)``: one label counted as two)."""
    modules = RedeemModules({"text": 8, "image": 6}, {"joint": 8}, RedeemConfig(**TINY, label_token=True))
    labels = torch.tensor([[[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    embeddings = modules.label_embeddings["joint"]
    expected = torch.stack([embeddings[1], (embeddings[0] + 2 * embeddings[1]) / 3])
    torch.testing.assert_close(modules.label_token("joint", labels)[:, 0], expected)


def test_eq5_saim_queries_give_each_of_three_other_modalities_its_own_feature_block():
    """Eq. 5 for four modalities: the queries of a's prompt hold b's, c's and d's retrieved tokens one after another,
    each in its own block of features (zeros elsewhere). Guards: saim_queries mutant 18 (``start += width`` ->
    ``start = width``: the third block at the second's offset)."""
    widths = {"a": 2, "b": 3, "c": 4, "d": 5}
    modules = RedeemModules(widths, {"joint": 5}, RedeemConfig(**TINY))
    retrieved = {m: torch.randn(2, 3, 4, d) for m, d in widths.items()}
    queries = modules.saim_queries("a", retrieved)
    assert queries.shape == (2, 3, 12, 12)
    start = 0
    for j, other in enumerate("bcd"):
        block, width = queries[:, :, 4 * j:4 * j + 4], widths[other]
        assert torch.equal(block[..., start:start + width], retrieved[other])
        assert block[..., :start].eq(0).all() and block[..., start + width:].eq(0).all()
        start += width


def test_layer_blocks_record_layer_0_inputs_and_carry_the_prompt_and_generated_blocks():
    """Eq. 7 in RedeemLayer.blocks: layer 0 records its input tokens and their non-padding keys (the intra-modal
    prompt's keys), puts the prompt block (at ``prompt_layer`` 0) at the front and the generated block before its
    modality, hidden for the samples that have it; the next layer carries both blocks' outputs on under the same
    names. Guards: RedeemLayer.blocks mutants 2, 3 (inputs recorded at another layer), 5 (padding kept as keys), 17
    (a fresh prompt at every layer), 20-22, 25, 29, 30 (the carried prompt lost) and 48, 52 (the generated block not
    placed before its modality)."""
    stream = Stream("joint", "x", 4, 2, ("text", "image"), "attn")
    ctx = _ctx([[1, 1], [1, 0]], spans={"joint": {"text": slice(0, 3), "image": slice(3, 5)}})
    prompt, generated = torch.randn(2, 2, 4), torch.randn(2, 4, 4)
    run = SimpleNamespace(ctx=ctx, config=SimpleNamespace(prompt_layer=0), first_inputs={}, first_valid={},
                          generated={"image": generated}, prompt_block=lambda stream: prompt)
    hidden, mask = torch.randn(2, 5, 4), torch.ones(2, 5)
    mask[1, 2] = 0  # padding
    first = RedeemLayer.blocks(SimpleNamespace(index=0, stream=stream), run, hidden, mask, {})
    assert [(b.name, b.before) for b in first] == [("prompt", None), ("image", "image")]
    assert first[0].tokens is prompt and first[1].tokens is generated and first[1].hidden.tolist() == [True, False]
    assert torch.equal(run.first_inputs["text"], hidden[:, :3])
    assert torch.equal(run.first_inputs["image"], hidden[:, 3:])
    assert run.first_valid["text"].tolist() == [[True] * 3, [True, True, False]]
    carried = {"prompt": torch.randn(2, 2, 4), "image": torch.randn(2, 4, 4)}
    later = RedeemLayer.blocks(SimpleNamespace(index=1, stream=stream), run, torch.randn(2, 5, 4), None, carried)
    assert [(b.name, b.before) for b in later] == [("prompt", None), ("image", "image")]
    assert later[0].tokens is carried["prompt"] and later[1].tokens is carried["image"]
    assert torch.equal(run.first_inputs["text"], hidden[:, :3])


def test_intra_prompt_of_a_run_masks_padding_and_uses_generated_tokens_only_where_missing():
    """RAGPT's intra-modal prompt in a run: a modality's retrieved tokens attend to the sample's own first-layer tokens
    with padding masked out, and to the generated tokens for samples that miss the modality. Guards:
    RedeemRun._prompt mutants 31, 35 (the padding mask not passed) and 36 (``not in`` -> ``in``)."""
    config = RedeemConfig(**TINY, prompter="intra", generator="mean")
    modules = RedeemModules({"text": 8, "image": 6}, {"joint": 8}, config)
    retrieved = {"text": torch.randn(2, 3, 4, 8), "image": torch.randn(2, 3, 4, 6)}
    generated = {"image": torch.randn(2, 4, 6)}
    run = RedeemRun("default", config, modules, _ctx([[1, 1], [1, 0]]), retrieved=retrieved, generated=generated,
                    labels=None)
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[0, 3:] = False
    run.first_inputs.update(text=torch.randn(2, 5, 8), image=torch.randn(2, 4, 6))
    run.first_valid.update(text=valid, image=torch.ones(2, 4, dtype=torch.bool))
    with torch.no_grad():
        text = modules.intra_prompt("text", run.first_inputs["text"], retrieved["text"], valid)
        real = modules.intra_prompt("image", run.first_inputs["image"], retrieved["image"], run.first_valid["image"])
        made = modules.intra_prompt("image", generated["image"], retrieved["image"])
        torch.testing.assert_close(run._prompt("text"), text)
        torch.testing.assert_close(run._prompt("image"), torch.stack([real[0], made[1]]))
        assert not torch.allclose(text, modules.intra_prompt("text", run.first_inputs["text"], retrieved["text"]))


def test_readme_table3_switch_values_are_the_ones_the_config_accepts():
    """Issue 16 item 7: the README's REDEEM section names every Table 3 switch value, and each is accepted by the
    config while the old wrong names are refused. Guards: README option names drifting from the code again (it said
    ``generator="cross"`` and ``prompter="inter"``, which the config rejects)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    line = " ".join(readme[readme.index("Table 3 switches: `retrieval`"):].split("\n")[:2])
    for option in ("retrieval", "generator", "prompter"):
        listed = re.search(rf"`{option}` \(([^)]*)\)", line).group(1)
        values = [v.split("=")[0].strip() for v in re.split(r"[/;]", listed) if v.strip()]
        values = [v.split()[0] for v in values]
        assert len(values) >= 3, (option, listed)
        for value in values:
            hf_missing.get_method_config("redeem", **{option: value})
    for option, wrong in (("generator", "cross"), ("prompter", "inter")):
        with pytest.raises(ValueError, match=option):
            hf_missing.get_method_config("redeem", **{option: wrong})
