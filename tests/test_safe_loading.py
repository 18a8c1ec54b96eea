"""The pieces of safe loading (hf_missing.loading, hf_missing.compat, atomic saves) checked one by one; the
crafted-folder attacks live in test_hostile_adapters.py."""

from __future__ import annotations

import json
import shutil

import faiss
import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForSequenceClassification, CLIPModel, Trainer, TrainingArguments
from transformers.models.auto.auto_factory import _BaseAutoModelClass

import hf_missing
from hf_missing import MissingModalityForClassification, compat, loading
from hf_missing.data.synthetic import shapes_dataset, tiny_backbone
from hf_missing.methods.redeem.bank import BANK_FILE, BankError, MemoryBank, build_index
from tests.conftest import make_batch, perturbed
from tests.test_hub import TINY_OPTIONS

METHOD_OPTIONS = {**TINY_OPTIONS, "cmpt": {}, "redeem": {}, "ragpt": {}}


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backbone")
    tiny_backbone("clip").save_pretrained(folder)
    return folder


def _model(backbone_dir, method: str = "map") -> MissingModalityForClassification:
    model = MissingModalityForClassification.from_pretrained(str(backbone_dir), num_labels=4, adapter=method,
                                                             adapter_options=METHOD_OPTIONS.get(method, {}))
    return perturbed(model)


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("backbone", ["clip", "vilt"])
@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_dry_run_plans_exactly_the_tensors_injection_creates(backbone, method):
    """The meta-device dry run must predict every saved tensor with its shape and dtype; a plan that missed one
    (e.g. a dry run that skipped modules_to_save) would make the strict loader refuse every real adapter, and one
    that invented tensors would let a file smuggle them in."""
    model = MissingModalityForClassification.from_backbone(tiny_backbone(backbone), num_labels=3)
    config = hf_missing.get_method_config(method, **METHOD_OPTIONS.get(method, {}))
    plan = loading.plan_adapter(MissingModalityForClassification, model.config, config)
    before = sum(p.numel() * p.element_size() for p in model.parameters())
    head = sum(p.numel() * p.element_size() for p in model.head.parameters())
    model.add_adapter(config)
    state = model.get_adapter_state_dict()
    assert plan.tensors == {f"base_model.model.{k}": (tuple(v.shape), v.dtype) for k, v in state.items()}
    after = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    assert plan.nbytes == after - before + head  # the backbone is not the adapter's; the head and copies are


def test_budget_is_the_users_to_raise_in_code(backbone_dir, tmp_path):
    """A budget that only counted options (not the head) or that the adapter file could raise would let a
    small config allocate unbounded memory; the user's max_adapter_bytes works both ways."""
    model = _model(backbone_dir)
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(hf_missing.AdapterLoadError, match=r"above the budget of 1,000 bytes.*max_adapter_bytes"):
        MissingModalityForClassification.from_pretrained(tmp_path / "adapter", max_adapter_bytes=1000)
    with pytest.raises(hf_missing.AdapterLoadError, match="above the budget"):
        MissingModalityForClassification.from_backbone(tiny_backbone("clip"), num_labels=4).add_adapter(
            hf_missing.get_method_config("map"), max_adapter_bytes=1000)
    loaded = MissingModalityForClassification.from_pretrained(tmp_path / "adapter", max_adapter_bytes=10**9)
    batch = make_batch(_shapes(), "clip", n=4)
    assert torch.equal(_logits(loaded.eval(), batch), _logits(model, batch))


def _shapes():
    return hf_missing.simulate_missing(shapes_dataset(n_train=8, n_test=4, seed=0), rate=0.7, seed=0)["train"]


def test_auto_classes_route_only_hf_missing_adapters(backbone_dir, tmp_path):
    """Every Auto model class carries the hook (transformers copies from_pretrained into each one, so patching the
    base class alone would route nothing), an hf_missing adapter folder reaches the wrapper, and a stock
    checkpoint loads exactly as transformers loads it, unless the call names a method with adapter=."""
    routed = [c for c in compat.auto._auto_classes() if "from_pretrained" in c.__dict__]
    assert {AutoModel, AutoModelForSequenceClassification} <= set(routed)
    assert all(getattr(c.__dict__["from_pretrained"].__func__, "__hf_missing_routed__", False) for c in routed
               if c is not _BaseAutoModelClass)
    stock = AutoModel.from_pretrained(backbone_dir)
    assert type(stock) is CLIPModel
    reference = CLIPModel.from_pretrained(backbone_dir)
    assert all(torch.equal(a, b) for a, b in zip(stock.state_dict().values(), reference.state_dict().values(),
                                                 strict=True))
    wrapped = AutoModelForSequenceClassification.from_pretrained(backbone_dir, adapter="map", num_labels=3)
    assert isinstance(wrapped, MissingModalityForClassification) and wrapped.peft_config["default"].method_name == "map"
    folder = tmp_path / "adapter"
    _model(backbone_dir).save_pretrained(folder)
    (folder / "adapter_config.json").write_text('{"peft_type": "HFM_MAP", broken')
    with pytest.raises(hf_missing.AdapterLoadError, match=r"adapter_config.json is not valid JSON"):
        AutoModelForSequenceClassification.from_pretrained(folder)


def test_failed_save_leaves_the_previous_adapter_and_a_new_save_drops_stale_files(backbone_dir, tmp_path,
                                                                                  monkeypatch):
    """A save that wrote into the folder in place would leave a new config over old weights when it fails
    midway; one that kept unknown old files would let a stale redeem bank or weights file survive."""
    folder = tmp_path / "adapter"
    first, batch = _model(backbone_dir), make_batch(_shapes(), "clip", n=4)
    first.save_pretrained(folder)
    (folder / "notes.txt").write_text("kept")
    (folder / "redeem_bank.safetensors").write_bytes(b"stale")
    second = _model(backbone_dir, "rep")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf_missing.MissingModalityConfig, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        second.save_pretrained(folder)
    monkeypatch.undo()
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "HFM_MAP"
    assert torch.equal(_logits(MissingModalityForClassification.from_pretrained(folder).eval(), batch),
                       _logits(first, batch))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    second.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                        "config.json", "notes.txt"]
    assert torch.equal(_logits(MissingModalityForClassification.from_pretrained(folder).eval(), batch),
                       _logits(second, batch))


def test_adapter_is_never_saved_beside_a_full_checkpoint(backbone_dir, tmp_path):
    """Without the refusal, a later from_pretrained of the folder loads the full checkpoint and ignores the
    adapter silently."""
    MissingModalityForClassification.from_pretrained(str(backbone_dir), num_labels=4).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"holds a full checkpoint \(\['model.safetensors'\]\)"):
        _model(backbone_dir).save_pretrained(tmp_path)


def test_trainer_output_folder_loads_with_automodel(backbone_dir, tmp_path):
    """Trainer's save_model writes the resume index beside the adapter; treating it as a full checkpoint made
    AutoModel.from_pretrained fail with 'Adapter with name default already exists'."""
    model, batch = _model(backbone_dir), make_batch(_shapes(), "clip", n=4)
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    trainer.save_model(str(tmp_path))
    assert (tmp_path / "model.safetensors.index.json").is_file()
    loaded = AutoModel.from_pretrained(tmp_path)
    assert torch.equal(_logits(loaded.eval(), batch), _logits(model, batch))


def test_loader_refuses_what_the_dry_run_does_not_own(backbone_dir, tmp_path):
    """The strict reader compares the file's header with the plan: an extra backbone key, a missing key, a wrong
    shape, an integer tensor and a NaN each fail naming the key, before the model is touched."""
    model = _model(backbone_dir)
    plan = loading.plan_adapter(MissingModalityForClassification, model.config,
                                hf_missing.get_method_config("map", **TINY_OPTIONS["map"]))
    state = {f"base_model.model.{k}": v for k, v in model.get_adapter_state_dict().items()}
    key = next(k for k in state if "map_prompts" in k)
    cases = {
        "extra": ({**state, "base_model.model.backbone.logit_scale": torch.zeros(())}, "does not own"),
        "missing": ({k: v for k, v in state.items() if k != key}, "lacks tensor"),
        "shape": ({**state, key: torch.zeros(1)}, "has shape"),
        "dtype": ({**state, key: state[key].long()}, "is I64"),
        "nan": ({**state, key: state[key] * float("nan")}, "NaN or infinite"),
    }
    for name, (tensors, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        with pytest.raises(hf_missing.AdapterLoadError, match=message):
            loading.read_adapter_weights(path, plan)


def test_peft_loaders_check_hf_missing_adapters(backbone_dir, tmp_path):
    """PeftModel.from_pretrained / load_adapter build the adapter from every key of adapter_config.json and load
    the weights non-strictly: without the hook a smuggled frozen-backbone key overwrites the backbone and an extra
    modules_to_save entry trains a copy of it."""
    model, batch = _model(backbone_dir), make_batch(_shapes(), "clip", n=4)
    model.save_pretrained(tmp_path / "clean")
    base = MissingModalityForClassification.from_pretrained(str(backbone_dir), num_labels=4)
    assert torch.equal(_logits(PeftModel.from_pretrained(base, tmp_path / "clean").eval(), batch),
                       _logits(model, batch))
    smuggled = shutil.copytree(tmp_path / "clean", tmp_path / "smuggled")
    state = load_file(smuggled / "adapter_model.safetensors")
    key = "base_model.model.backbone.text_model.embeddings.token_embedding.weight"
    state[key] = torch.zeros(99, 32)
    save_file(state, str(smuggled / "adapter_model.safetensors"))
    extra = shutil.copytree(tmp_path / "clean", tmp_path / "extra")
    config = json.loads((extra / "adapter_config.json").read_text())
    config["modules_to_save"].append("backbone.text_model.embeddings")
    (extra / "adapter_config.json").write_text(json.dumps(config))
    for folder, message in ((smuggled, "does not own"), (extra, "modules_to_save names")):
        base = MissingModalityForClassification.from_pretrained(str(backbone_dir), num_labels=4)
        with pytest.raises(hf_missing.AdapterLoadError, match=message):
            PeftModel.from_pretrained(base, folder)
        peft_model = PeftModel.from_pretrained(base, tmp_path / "clean")
        with pytest.raises(hf_missing.AdapterLoadError, match=message):
            peft_model.load_adapter(folder, "second")
        assert "second" not in peft_model.peft_config
        assert torch.equal(peft_model.get_base_model().backbone.text_model.embeddings.token_embedding.weight,
                           model.backbone.text_model.embeddings.token_embedding.weight)


def _bank(index_type: str, rows: int = 300):
    rng = np.random.default_rng(0)
    arrays = {"query.text": rng.standard_normal((rows, 8)).astype(np.float16),
              "query.image": rng.standard_normal((rows, 8)).astype(np.float16),
              "tokens.text": rng.standard_normal((rows, 2, 8)).astype(np.float16),
              "tokens.image": rng.standard_normal((rows, 2, 8)).astype(np.float16),
              "content_hash": np.arange(rows, dtype=np.int64)}
    vectors = np.concatenate([arrays["query.text"], arrays["query.image"]], axis=1)
    index = build_index(vectors, index_type, nlist=8, nprobe=2) if index_type == "ivf" else build_index(vectors)
    signature = {"model_type": "clip", "streams": {"text": [8, 2], "vision": [8, 2]}}
    return MemoryBank(arrays=arrays, index=index, modalities=("text", "image"), signature=signature,
                      index_type=index_type), vectors


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_bank_index_is_rebuilt_from_the_bank_alone(index_type, tmp_path, monkeypatch):
    """The index must come back from redeem_bank.safetensors without faiss's reader (which maps files a crafted
    IVF index names) and answer exactly as the saved one; an IVF index is rebuilt from its saved lists (a layout
    whose list numbers leave [0, nlist) is refused instead of reaching faiss's add_core)."""
    bank, vectors = _bank(index_type)
    bank.save(tmp_path)

    def never(*args, **kwargs):
        raise AssertionError("faiss deserialised a file")

    monkeypatch.setattr(faiss, "read_index", never)
    loaded = MemoryBank.load(tmp_path)
    queries = vectors[:20].astype(np.float32)
    assert type(loaded.index) is type(bank.index)
    assert np.array_equal(loaded.search(queries, 5)[1], bank.search(queries, 5)[1])
    if index_type == "ivf":
        arrays = load_numpy(str(tmp_path / BANK_FILE))
        with safe_open(str(tmp_path / BANK_FILE), "np") as f:
            metadata = f.metadata()
        arrays["ivf.lists"][0] = 8
        save_numpy(arrays, str(tmp_path / BANK_FILE), metadata)
        with pytest.raises(BankError, match=r"redeem_bank.safetensors: the IVF layout does not fit"):
            MemoryBank.load(tmp_path)


def test_backbone_config_cannot_claim_more_than_its_weights(backbone_dir, tmp_path):
    """A backbone named by an adapter is as untrusted as the adapter: a config.json claiming a 10^9-token vocabulary
    beside 150 KB of weights would make transformers allocate and initialise 128 GB; it is refused, counted on the
    meta device, before any allocation."""
    _model(backbone_dir).save_pretrained(tmp_path / "adapter")
    big = shutil.copytree(backbone_dir, tmp_path / "big")
    config = json.loads((big / "config.json").read_text())
    config["text_config"]["vocab_size"] = 10**9
    (big / "config.json").write_text(json.dumps(config))
    with pytest.raises(hf_missing.AdapterLoadError, match=r"declares [\d,]+ bytes of tensors.*weights hold"):
        MissingModalityForClassification.from_pretrained(tmp_path / "adapter", backbone_name_or_path=str(big))


def test_padding_files_do_not_buy_a_backbone_config_more_memory(backbone_dir, tmp_path):
    """Counting every *.safetensors in the folder would let a sparse padding file beside model.safetensors
    excuse a config that claims gigabytes; only the files transformers loads count."""
    _model(backbone_dir).save_pretrained(tmp_path / "adapter")
    big = shutil.copytree(backbone_dir, tmp_path / "big")
    config = json.loads((big / "config.json").read_text())
    config["text_config"]["vocab_size"] = 10**7
    (big / "config.json").write_text(json.dumps(config))
    with open(big / "pad.safetensors", "wb") as f:
        f.truncate(10**10)  # sparse: 10 GB apparent, nothing on disk
    with pytest.raises(hf_missing.AdapterLoadError, match="declares"):
        MissingModalityForClassification.from_pretrained(tmp_path / "adapter", backbone_name_or_path=str(big))


def _crafted(backbone_dir, tmp_path, edit):
    folder = tmp_path / "crafted"
    _model(backbone_dir).save_pretrained(folder)
    edit(folder)
    return folder


def _escaped_peft_type(folder):
    config = json.loads((folder / "adapter_config.json").read_text())
    config["modules_to_save"].append("backbone.text_model.embeddings")
    (folder / "adapter_config.json").write_text(json.dumps(config, ensure_ascii=True).replace("HFM_", "\\u0048FM_"))


def test_peft_routing_parses_the_config_instead_of_matching_bytes(backbone_dir, tmp_path):
    """A byte search for "HFM_ missed a JSON-escaped peft_type, so PeftModel loaded the crafted config unchecked
    (its modules_to_save trained a copy of the frozen embeddings)."""
    folder = _crafted(backbone_dir, tmp_path, _escaped_peft_type)
    assert b'"HFM_' not in (folder / "adapter_config.json").read_bytes()
    base = MissingModalityForClassification.from_pretrained(str(backbone_dir), num_labels=4)
    with pytest.raises(hf_missing.AdapterLoadError, match="modules_to_save names"):
        PeftModel.from_pretrained(base, folder)


def test_adapters_addressed_by_subfolder_are_refused(backbone_dir, tmp_path):
    """peft reads subfolder/ while a check of the root would pass: such adapters are refused on every loader."""
    _model(backbone_dir).save_pretrained(tmp_path / "repo")
    _model(backbone_dir, "rep").save_pretrained(tmp_path / "repo" / "sub")
    base = MissingModalityForClassification.from_pretrained(str(backbone_dir), num_labels=4)
    for load in (lambda: PeftModel.from_pretrained(base, tmp_path / "repo", subfolder="sub"),
                 lambda: MissingModalityForClassification.from_pretrained(tmp_path / "repo", subfolder="sub")):
        with pytest.raises(hf_missing.AdapterLoadError, match="subfolder='sub'"):
            load()


def test_head_settings_of_a_wrapper_backbone_are_not_trusted(backbone_dir, tmp_path):
    """An adapter that omits head_hidden_ratio and names a wrapper checkpoint whose config says 100000 would get
    that unchecked value (a multi-GB head) unless every head setting is passed explicitly."""
    wrapper = tmp_path / "wrapper"
    MissingModalityForClassification.from_pretrained(str(backbone_dir), num_labels=4).save_pretrained(wrapper)
    config = json.loads((wrapper / "config.json").read_text())
    config["head_hidden_ratio"] = 100_000
    (wrapper / "config.json").write_text(json.dumps(config))

    def edit(folder):
        adapter = json.loads((folder / "adapter_config.json").read_text())
        del adapter["model_settings"]["head_hidden_ratio"]
        (folder / "adapter_config.json").write_text(json.dumps(adapter))
        (folder / "config.json").write_text(json.dumps({"backbone_name_or_path": str(wrapper)}))

    folder = _crafted(backbone_dir, tmp_path, edit)
    loaded = MissingModalityForClassification.from_pretrained(folder)
    assert loaded.config.head_hidden_ratio == 2


def test_weights_are_checked_in_the_models_dtype(backbone_dir, tmp_path):
    """1e300 is finite as float64 but inf as float32: the finite check must run after the cast."""
    def edit(folder):
        state = load_file(folder / "adapter_model.safetensors")
        key = next(k for k in state if "head.out.weight" in k)
        state[key] = torch.full_like(state[key], 1e300, dtype=torch.float64)
        save_file(state, str(folder / "adapter_model.safetensors"))

    folder = _crafted(backbone_dir, tmp_path, edit)
    with pytest.raises(hf_missing.AdapterLoadError, match=r"head.out.weight holds NaN or infinite values"):
        MissingModalityForClassification.from_pretrained(folder)


@pytest.mark.parametrize("case", ["deep-json", "link-out"])
def test_crafted_files_fail_as_adapter_errors(backbone_dir, tmp_path, case):
    """Deeply nested JSON raised RecursionError and a config.json linked to a file outside the folder was read."""
    def edit(folder):
        if case == "deep-json":
            (folder / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
        else:
            outside = tmp_path / "outside.json"
            outside.write_text((folder / "config.json").read_text())
            (folder / "config.json").unlink()
            (folder / "config.json").symlink_to(outside)

    folder = _crafted(backbone_dir, tmp_path, edit)
    with pytest.raises(hf_missing.AdapterLoadError, match="is not valid JSON" if case == "deep-json" else "outside"):
        MissingModalityForClassification.from_pretrained(folder)


def test_push_stages_only_the_adapters_files(backbone_dir, tmp_path):
    """push_adapter(folder) copied the whole tree: Trainer checkpoints with their pickles and logs went up too."""
    from hf_missing.hub.push import _stage

    folder = tmp_path / "out"
    _model(backbone_dir).save_pretrained(folder)
    (folder / "checkpoint-500").mkdir()
    (folder / "checkpoint-500" / "optimizer.pt").write_bytes(b"pickle")
    (folder / "notes.txt").write_text("private")
    staged = _stage(folder, tmp_path / "staged")
    assert sorted(p.name for p in staged.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                        "config.json"]


def test_missing_settings_beside_an_adapter_are_checked(tmp_path):
    """missing_settings.json travels with Hub adapters; a string rate reached the evaluation as a TypeError."""
    from hf_missing.training import saved_missing_settings

    (tmp_path / "missing_settings.json").write_text(json.dumps({"rate": "0.7", "seed": 0, "pattern": "both"}))
    with pytest.raises(hf_missing.AdapterLoadError, match=r"missing_settings.json holds invalid missing settings"):
        saved_missing_settings(tmp_path)
    (tmp_path / "missing_settings.json").write_text(json.dumps({"rate": 0.7, "seed": 0, "pattern": "both"}))
    assert saved_missing_settings(tmp_path)["rate"] == 0.7
