"""Real training with transformers.Trainer on tiny random backbones, and the PEFT round trips."""

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModel, Trainer, TrainingArguments

import hf_missing
from hf_missing import MissingModalityCollator, MissingModalityForClassification, metrics
from hf_missing.data.synthetic import tiny_backbone, tiny_processor
from tests.conftest import BACKBONES, make_batch, make_model


def _train(model, dataset, backbone, tmp_path, epochs=15):
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none",
                             num_train_epochs=epochs, per_device_train_batch_size=16, learning_rate=1e-2,
                             logging_steps=1, save_strategy="no", remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset["train"], eval_dataset=dataset["test"],
                      data_collator=MissingModalityCollator(tiny_processor(backbone)),
                      compute_metrics=metrics.for_task("single_label"))
    trainer.train()
    return trainer


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", ["map", "baseline", "rep"])
def test_trainer_learns_and_only_adapter_and_head_change(shapes_missing, backbone, method, tmp_path):
    # 4 prompt tokens: 16 per layer (MAP's default) outnumber the tiny random model's 9 text tokens and
    # drown its weak input signal; on real backbones the default is fine. The tiny models have 2 layers.
    options = {"map": {"prompt_length": 4}, "baseline": {},
               "rep": {"prompt_length": 4, "prompt_depth": 2, "shared_dim": 8, "mlp_reduction": 4}}[method]
    model = make_model(backbone, method, **options)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(("map_prompts" in n) or ("rep_buffers" in n) or ("modules_to_save" in n) for n in trained)
    trainer = _train(model, shapes_missing, backbone, tmp_path)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert all(not torch.equal(params[n], v) for n, v in trained.items())
    results = trainer.evaluate()
    assert {"eval_accuracy", "eval_complete/accuracy", "eval_missing_image/accuracy"} <= set(results)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_save_load_is_bit_identical_through_auto_model(shapes_missing, backbone, tmp_path):
    base = make_model(backbone, None)
    base.save_pretrained(tmp_path / "base")
    model = AutoModel.from_pretrained(tmp_path / "base", adapter="map", num_labels=4)
    assert isinstance(model, MissingModalityForClassification)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    batch = make_batch(shapes_missing["train"], backbone, n=12)
    torch.manual_seed(1)  # ViLT's patch embedding draws a random patch order (torch.multinomial) each forward
    logits = model(**batch).logits
    model.save_pretrained(tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "config.json"]
    loaded = AutoModel.from_pretrained(tmp_path / "adapter").eval()
    torch.manual_seed(1)
    assert torch.equal(loaded(**batch).logits, logits)


@pytest.mark.parametrize("prompt_type", ["input", "attention"])
def test_peft_api_round_trip_and_disable_adapter(shapes_missing, prompt_type, tmp_path):
    base = make_model("clip", None).eval()
    batch = make_batch(shapes_missing["train"], "clip", n=12)
    reference = _features(base, batch)
    peft_model = get_peft_model(base, hf_missing.get_method_config("map", prompt_type=prompt_type))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "map_prompts" in name:
                p.normal_()
    logits = peft_model(**batch).logits
    assert not torch.allclose(_features(base, batch), reference)
    with peft_model.disable_adapter():
        assert torch.equal(_features(base, batch), reference)
    peft_model.save_pretrained(tmp_path / "peft")
    reloaded = PeftModel.from_pretrained(make_model("clip", None), tmp_path / "peft").eval()
    reloaded.base_model.model.backbone.load_state_dict(base.backbone.state_dict(), strict=False)
    assert torch.equal(reloaded(**batch).logits, logits)


def _features(model, batch, policy="dummy"):
    from hf_missing.context import ForwardContext, forward_context

    codes = batch["missing_type"]
    ctx = ForwardContext(missing_type=codes, present=model.patterns.present(codes),
                         modalities=model.patterns.modalities, policy=policy, lockstep=True)
    with torch.no_grad(), forward_context(ctx):
        return model.interface.encode(batch, ctx)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("policy", ["mask", "zero"])
def test_policies_change_only_incomplete_samples(shapes_missing, backbone, policy):
    model = make_model(backbone, None).eval()
    dummy = make_batch(shapes_missing["train"], backbone, n=12)
    other = make_batch(shapes_missing["train"], backbone, n=12, policy=policy)
    assert other["missing_policy"] == policy
    diff = (_features(model, dummy) - _features(model, other, policy)).abs().sum(1)
    complete = dummy["missing_type"] == 0
    assert (diff[complete] < 1e-4).all() and (diff[~complete] > 1e-4).all()


def test_vilt_takes_text_longer_than_its_positions(shapes):
    model = MissingModalityForClassification.from_backbone(tiny_backbone("vilt"), num_labels=4, max_text_len=24)
    batch = make_batch(hf_missing.simulate_missing(shapes["train"], rate=0.0), "vilt", n=4)
    ids = torch.cat([batch["input_ids"], batch["input_ids"][:, 1:], batch["input_ids"][:, 1:]], dim=1)[:, :24]
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=batch["pixel_values"],
                missing_type=torch.zeros(4, dtype=torch.long))
    assert out.logits.shape == (4, 4)
    assert model.backbone.embeddings.text_embeddings.position_embeddings.weight.shape[0] == 24


@pytest.mark.parametrize(("problem_type", "num_labels"), [("multi_label_classification", 4),
                                                          (None, 1)])
def test_multilabel_and_binary_losses(shapes_missing, problem_type, num_labels):
    model = MissingModalityForClassification.from_backbone(tiny_backbone("clip"), num_labels=num_labels,
                                                           problem_type=problem_type)
    batch = make_batch(shapes_missing["train"], "clip", n=6)
    targets = torch.nn.functional.one_hot(batch["labels"], 4).float() if num_labels == 4 else batch["labels"] % 2
    batch["labels"] = targets
    out = model(**batch)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits.view(targets.shape), targets.float())
    assert out.logits.shape == (6, num_labels) and torch.allclose(out.loss, expected)
