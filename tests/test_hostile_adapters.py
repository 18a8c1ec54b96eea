"""Hostile adapters: crafted local folders and fake-Hub repos must either load a correct adapter or be refused
with ``hf_missing.AdapterLoadError`` (a ``ValueError``) naming the offending file, key or backbone, and no
pickled payload may ever run.

Every payload below is a pickle whose ``__reduce__`` creates a marker file; each test asserts that the marker
does not exist afterwards. The loading contract these tests hold the library to:

* ``adapter_config.json``'s ``model_settings`` holds only the head/task settings (``num_labels``, ``id2label``,
  ``label2id``, ``problem_type``, ``missing_policy``, ``modalities``, ``max_text_len``, ``head_hidden_ratio``,
  ``regression_loss``), type- and range-checked; nothing from an adapter file reaches a ``from_pretrained``
  keyword (attack 1: ``"weights_only": false`` plus a backbone checkpoint that is a pickle);
* backbones named by an adapter load from safetensors only (attack 2), an adapter pulled from the Hub may not
  name a local path as its backbone, and ``adapter_model.safetensors`` must hold exactly the adapter's keys,
  with float, finite tensors of the right shapes (attack 3);
* REDEEM's ``redeem_index.faiss`` is never deserialised and its bank file is validated (attack 4);
* a memory budget (``hf_missing.loading.MAX_ADAPTER_BYTES``, overridable in code only with
  ``max_adapter_bytes=``) is checked before anything is allocated (attack 5);
* saves are atomic, never mix an adapter into a full checkpoint, and ``Trainer.save_model`` output loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faiss
import huggingface_hub
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from huggingface_hub import constants
from huggingface_hub.utils._http import default_client_factory
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from transformers import AutoModel, Trainer, TrainingArguments

import hf_missing
from hf_missing import AdapterLoadError, MissingModalityCollator, MissingModalityForClassification
from hf_missing.compat.peft import adapters_injected
from hf_missing.data.synthetic import tiny_backbone, tiny_processor
from hf_missing.methods.redeem import BankError, build_index, prepare_for_training
from hf_missing.methods.redeem.bank import BANK_FILE
from hf_missing.methods.redeem.retrieval import memory_bank_of
from tests.conftest import make_batch
from tests.test_hub import TINY_OPTIONS, FakeHub

M = MissingModalityForClassification
ADAPTER_CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
CONFIG = "config.json"
KEY = "base_model.model."  # prefix of every key in a saved adapter file (checkpoint format)
EMBEDDING_KEY = f"{KEY}backbone.text_model.embeddings.token_embedding.weight"
POSITION_KEY = f"{KEY}backbone.text_model.embeddings.position_embedding.weight"
REDEEM_TINY = {"num_retrieved": 3, "bank_tokens": 4}
INDEX_FILE = "redeem_index.faiss"  # faiss.write_index output that older REDEEM adapters carried beside the bank
QUICK_S = 10.0  # a refusal of a hostile size must come before any allocation, hence fast
HEADROOM = 3 << 30  # address space a hostile load may take beyond the current one before it fails (not the machine)
LOADERS = {"AutoModel": AutoModel.from_pretrained, "MissingModalityForClassification": M.from_pretrained}


# ---- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def hub(tmp_path_factory):
    """An in-process fake Hub (no sockets) with its own cache, online even when HF_HUB_OFFLINE=1 is set."""
    fake = FakeHub()
    base = tmp_path_factory.mktemp("hub")
    cache = base / "outer" / "hf_cache"  # nested, so that traversal tests can watch the folders above it
    cache.mkdir(parents=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_CACHE", str(cache))
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            patch.delenv(name, raising=False)
        for module in (transformers.utils.hub, transformers.modeling_utils, transformers.utils,
                       transformers.configuration_utils, transformers.dynamic_module_utils):
            patch.setattr(module, "is_offline_mode", lambda: False, raising=False)
        huggingface_hub.set_client_factory(fake.client)
        try:
            fake.base, fake.cache = base, cache
            yield fake
        finally:
            huggingface_hub.set_client_factory(default_client_factory)


@pytest.fixture(scope="module")
def lab(hub, shapes_missing, tmp_path_factory):
    """A local safetensors CLIP backbone (also on the fake Hub as ``tiny/clip``), trained MAP / MemPrompt / REP
    adapters saved from it with their reference logits, a REP adapter on a local ViLT backbone, a clean wrapper
    checkpoint, and the clean MAP adapter pushed as ``org/clean-map``."""
    root = tmp_path_factory.mktemp("lab")
    backbone = root / "clip-backbone"
    tiny_backbone("clip").save_pretrained(backbone)
    put_repo(hub, "tiny/clip", folder_files(backbone))
    batch = make_batch(shapes_missing["train"], "clip", n=4)
    folders, logits = {}, {}
    for method in ("map", "memprompt", "rep"):
        model = M.from_pretrained(str(backbone), num_labels=4, adapter=method, adapter_options=TINY_OPTIONS[method])
        perturb(model)
        model.save_pretrained(root / method)
        folders[method], logits[method] = root / method, logits_of(model, batch)
    vilt = root / "vilt-backbone"
    tiny_backbone("vilt").save_pretrained(vilt)
    model = M.from_pretrained(str(vilt), num_labels=4, adapter="rep", adapter_options=TINY_OPTIONS["rep"])
    perturb(model)
    model.save_pretrained(root / "vilt-rep")
    vilt_batch = make_batch(shapes_missing["train"], "vilt", n=4)
    folders["vilt-rep"], logits["vilt-rep"] = root / "vilt-rep", logits_of(model, vilt_batch)
    wrapper = root / "wrapper"
    M.from_pretrained(str(backbone), num_labels=4).save_pretrained(wrapper)
    hf_missing.hub.push_adapter(folders["map"], "org/clean-map", backbone_name_or_path="tiny/clip")
    return SimpleNamespace(root=root, backbone=backbone, folders=folders, logits=logits, batch=batch, wrapper=wrapper,
                           vilt_batch=vilt_batch)


@pytest.fixture(scope="module")
def redeem(lab, shapes_missing, tmp_path_factory):
    """A trained REDEEM adapter on the local CLIP backbone, saved with its bank, plus a batch with neighbours, the
    saved model's logits on it and its retrieval results."""
    root = tmp_path_factory.mktemp("redeem")
    model = M.from_pretrained(str(lab.backbone), num_labels=4, adapter="redeem", adapter_options=REDEEM_TINY)
    collator = MissingModalityCollator(tiny_processor("clip"))
    train, redeem_collator = prepare_for_training(model, shapes_missing["train"], collator, cache_dir=root / "cache")
    perturb(model)
    batch = redeem_collator([train[i] for i in range(8)])
    model.save_pretrained(root / "adapter")
    bank = memory_bank_of(model)
    queries = search_queries(bank)
    return SimpleNamespace(folder=root / "adapter", batch=batch, logits=logits_of(model, batch), queries=queries,
                           neighbours=bank.search(queries, 3)[1], bank_len=len(bank))


# ---- helpers ----------------------------------------------------------------------------------------------------
class Payload:
    """Pickles to ``open(marker, "w")``: unpickling it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def payload_pickle(marker: Path) -> bytes:
    """A raw pickle that writes ``marker`` when loaded."""
    return pickle.dumps({"weight": Payload(marker)})


def payload_checkpoint(path: Path, marker: Path) -> None:
    """A ``torch.save`` (zip) checkpoint whose unpickling writes ``marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"text_model.embeddings.token_embedding.weight": Payload(marker)}, path)


def perturb(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()


def logits_of(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return model.eval()(**batch).logits


def search_queries(bank: Any) -> np.ndarray:
    parts = [np.asarray(bank.arrays[f"query.{m}"][:5], dtype=np.float32) for m in bank.modalities]
    return np.concatenate(parts, axis=1)


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def put_repo(fake: FakeHub, repo_id: str, files: dict[str, bytes]) -> None:
    """Store a repo on the fake Hub as is (no upload-side validation: file names may be hostile)."""
    fake.repos[repo_id] = {"files": dict(files), "sha": hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data))


def copy(folder: Path, tmp_path: Path, name: str = "crafted") -> Path:
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


def downloaded(fake: FakeHub, suffixes: tuple[str, ...] = (".bin", ".pt", ".pth", ".ckpt", ".pkl")) -> list[str]:
    return [p for m, p in fake.requests if m == "GET" and "/resolve/" in p and p.lower().endswith(suffixes)]


def refused(load: Callable[[], Any], *, match: str, marker: Path | None = None,
            error: type[BaseException] = AdapterLoadError) -> BaseException:
    """Run ``load`` and check that it raised ``error`` matching ``match`` and that no payload ran."""
    outcome: BaseException | None = None
    try:
        load()
    except Exception as err:
        outcome = err
    ran = marker is not None and marker.exists()
    assert not ran, f"the pickled payload ran (marker written); the load ended with {outcome!r}"
    assert outcome is not None, "no error was raised: the crafted input was accepted"
    assert isinstance(outcome, error), f"expected {error.__name__}, got {type(outcome).__name__}: {outcome}"
    assert re.search(match, str(outcome)), f"message does not match {match!r}: {outcome}"
    return outcome


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def bounded_memory() -> Iterator[None]:
    """Cap this process's address space at its current size plus HEADROOM while a hostile config loads, so that a
    loader that does allocate fails the test (with a RuntimeError / MemoryError) instead of exhausting the machine."""
    if not sys.platform.startswith("linux") or not _vm_size():
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_size() + HEADROOM
    for bound in (soft, hard):  # never loosen a limit that is already tighter
        if bound != resource.RLIM_INFINITY:
            limit = min(limit, bound)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def edit_config(folder: Path, change: Callable[[dict], None]) -> None:
    config = read_json(folder / ADAPTER_CONFIG)
    change(config)
    write_json(folder / ADAPTER_CONFIG, config)


def edit_weights(folder: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(folder / WEIGHTS)
    change(tensors)
    save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})


# ---- the crafted folders ----------------------------------------------------------------------------------------
def setting(key: str, value: Any) -> Callable[[Path, SimpleNamespace], None]:
    def mutate(folder: Path, ctx: SimpleNamespace) -> None:
        edit_config(folder, lambda c: c["model_settings"].__setitem__(key, value))
    return mutate


def weights(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path, SimpleNamespace], None]:
    return lambda folder, ctx: edit_weights(folder, change)


def tensor(key: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Path, SimpleNamespace], None]:
    return weights(lambda t: t.__setitem__(key, make(t[key])))


def smuggle_embedding(t: dict[str, torch.Tensor]) -> None:
    t[EMBEDDING_KEY] = torch.full((25, 32), 7.0)


def extra_modules_to_save(folder: Path, ctx: SimpleNamespace) -> None:
    edit_config(folder, lambda c: c["modules_to_save"].append("backbone.text_model.embeddings"))
    edit_weights(folder, lambda t: t.update({EMBEDDING_KEY: torch.full((25, 32), 7.0),
                                             POSITION_KEY: torch.full((16, 32), 7.0)}))


def extra_module_only(folder: Path, ctx: SimpleNamespace) -> None:
    edit_config(folder, lambda c: c["modules_to_save"].append("backbone.vision_model.embeddings"))


def replace(name: str, content: Callable[[SimpleNamespace], bytes]) -> Callable[[Path, SimpleNamespace], None]:
    def mutate(folder: Path, ctx: SimpleNamespace) -> None:
        (folder / name).write_bytes(content(ctx))
    return mutate


def drop_peft_type(folder: Path, ctx: SimpleNamespace) -> None:
    edit_config(folder, lambda c: c.pop("peft_type"))


def wrapper_backbone_with_payload(folder: Path, ctx: SimpleNamespace) -> None:
    """Attack 1, local: ``weights_only: false`` (and ``dtype: auto``) in model_settings, and config.json naming as
    backbone a wrapper checkpoint (model_type hf_missing, dtype unset) whose only weights are a pickle."""
    wrapper = ctx.tmp_path / "evil-wrapper"
    wrapper.mkdir()
    config = read_json(ctx.lab.wrapper / CONFIG)
    config["dtype"] = None
    write_json(wrapper / CONFIG, config)
    payload_checkpoint(wrapper / "pytorch_model.bin", ctx.marker)
    edit_config(folder, lambda c: c["model_settings"].update(weights_only=False, dtype="auto"))
    saved = read_json(folder / CONFIG)
    write_json(folder / CONFIG, {**saved, "backbone_name_or_path": str(wrapper)})


def wrapper_backbone_pickle_only(folder: Path, ctx: SimpleNamespace) -> None:
    """Attack 2 with a wrapper checkpoint (model_type hf_missing) as backbone whose only weights are a pickle; the
    adapter itself is clean."""
    wrapper = ctx.tmp_path / "evil-wrapper"
    wrapper.mkdir()
    write_json(wrapper / CONFIG, {**read_json(ctx.lab.wrapper / CONFIG), "dtype": None})
    payload_checkpoint(wrapper / "pytorch_model.bin", ctx.marker)
    write_json(folder / CONFIG, {**read_json(folder / CONFIG), "backbone_name_or_path": str(wrapper)})


def pickled_backbone(name: str, benign: bool = False) -> Callable[[Path, SimpleNamespace], None]:
    """Attack 2, local: a clean adapter whose backbone folder has no safetensors, only a pickle at ``name``."""
    def mutate(folder: Path, ctx: SimpleNamespace) -> None:
        backbone = ctx.tmp_path / "evil-backbone"
        backbone.mkdir()
        shutil.copy(ctx.lab.backbone / CONFIG, backbone / CONFIG)
        if benign:  # a real state dict (tensors only): refused all the same, safetensors is required
            torch.save(load_file(ctx.lab.backbone / "model.safetensors"), backbone / name)
        else:
            payload_checkpoint(backbone / name, ctx.marker)
        saved = read_json(folder / CONFIG)
        write_json(folder / CONFIG, {**saved, "backbone_name_or_path": str(backbone)})
    return mutate


def empty_weights(folder: Path, ctx: SimpleNamespace) -> None:
    (folder / WEIGHTS).write_bytes(b"")


def no_tensors(folder: Path, ctx: SimpleNamespace) -> None:
    save_file({}, folder / WEIGHTS, metadata={"format": "pt"})


def key_named(key: str) -> str:
    return re.escape(key.removeprefix(KEY))


W_HEAD_OUT = f"{KEY}head.out.weight"
B_HEAD_OUT = f"{KEY}head.out.bias"
W_DENSE = f"{KEY}head.dense.weight"
PROMPTS = f"{KEY}backbone.text_model.encoder.layers.0.map_prompts"
CONFIG_KEY = r"(?<![\w])config(?![\w.])"  # the key "config", not adapter_config.json / config.json

# (mutation, expected message) for a copy of the clean MAP adapter; every one must be refused.
CRAFTED = [
    # model_settings may hold only the head/task settings: any other key is named and refused
    pytest.param(setting("weights_only", False), "weights_only", id="settings-weights_only-false"),
    pytest.param(setting("trust_remote_code", True), "trust_remote_code", id="settings-trust_remote_code"),
    pytest.param(setting("use_safetensors", False), "use_safetensors", id="settings-use_safetensors-false"),
    pytest.param(setting("state_dict", {"head.out.bias": [0, 0, 0, 0]}), "state_dict", id="settings-state_dict"),
    pytest.param(setting("config", "/etc"), CONFIG_KEY, id="settings-config"),
    pytest.param(setting("key_mapping", {"^head": "backbone.text_model.embeddings"}), "key_mapping",
                 id="settings-key_mapping"),
    pytest.param(setting("device_map", "disk"), "device_map", id="settings-device_map"),
    # ... and each allowed setting is type- and range-checked
    pytest.param(setting("num_labels", "4"), "num_labels", id="settings-num_labels-string"),
    pytest.param(setting("num_labels", True), "num_labels", id="settings-num_labels-bool"),
    pytest.param(setting("problem_type", "ordinal_regression"), "problem_type", id="settings-problem_type"),
    pytest.param(setting("regression_loss", "__import__('os')"), "regression_loss", id="settings-regression_loss"),
    pytest.param(setting("missing_policy", "__import__('os')"), "missing_policy", id="settings-missing_policy"),
    pytest.param(setting("id2label", ["a", "b", "c", "d"]), "id2label", id="settings-id2label-list"),
    pytest.param(setting("head_hidden_ratio", 0), "head_hidden_ratio", id="settings-head_hidden_ratio-zero"),
    pytest.param(setting("max_text_len", -5), "max_text_len", id="settings-max_text_len-negative"),
    # attack 1: weights_only false + a wrapper checkpoint backbone that is only a pickle
    pytest.param(wrapper_backbone_with_payload, r"weights_only|safetensors|dtype",
                 id="attack1-wrapper-backbone-pickle"),
    # attack 2: backbones load from safetensors only
    pytest.param(wrapper_backbone_pickle_only, "safetensors", id="attack2-wrapper-backbone-pickle"),
    pytest.param(pickled_backbone("pytorch_model.bin"), "safetensors", id="attack2-backbone-pytorch_model.bin"),
    pytest.param(pickled_backbone("pytorch_model.bin", benign=True), "safetensors",
                 id="attack2-backbone-benign-pytorch_model.bin"),
    pytest.param(pickled_backbone("model.bin"), "safetensors", id="attack2-backbone-model.bin"),
    pytest.param(pickled_backbone("weights.pt"), "safetensors", id="attack2-backbone-weights.pt"),
    pytest.param(pickled_backbone("last.ckpt"), "safetensors", id="attack2-backbone-ckpt"),
    pytest.param(pickled_backbone("sub/pytorch_model.bin"), "safetensors", id="attack2-backbone-pickle-in-subfolder"),
    pytest.param(replace(WEIGHTS, lambda ctx: payload_pickle(ctx.marker)), re.escape(WEIGHTS),
                 id="attack2-pickle-disguised-as-adapter_model.safetensors"),
    pytest.param(replace(CONFIG, lambda ctx: payload_pickle(ctx.marker)), r"(?<![_\w])config\.json",
                 id="attack2-pickle-disguised-as-config.json"),
    pytest.param(replace(ADAPTER_CONFIG, lambda ctx: payload_pickle(ctx.marker)), re.escape(ADAPTER_CONFIG),
                 id="attack2-pickle-disguised-as-adapter_config.json"),
    # attack 3: the weights file holds exactly the adapter's keys, as float finite tensors of the right shapes
    pytest.param(weights(smuggle_embedding), key_named(EMBEDDING_KEY), id="attack3-extra-embedding-key"),
    pytest.param(extra_modules_to_save, r"modules_to_save|backbone\.text_model\.embeddings",
                 id="attack3-extra-modules_to_save-with-embedding-weights"),
    pytest.param(extra_module_only, r"modules_to_save|backbone\.vision_model\.embeddings",
                 id="attack3-extra-modules_to_save"),
    pytest.param(weights(lambda t: t.pop(W_HEAD_OUT)), key_named(W_HEAD_OUT), id="attack3-missing-key"),
    pytest.param(tensor(W_DENSE, lambda v: torch.zeros(64, 33)), key_named(W_DENSE), id="attack3-wrong-shape"),
    pytest.param(tensor(PROMPTS, lambda v: torch.zeros(3, 5, 32)), key_named(PROMPTS),
                 id="attack3-wrong-shape-prompts"),
    pytest.param(tensor(B_HEAD_OUT, lambda v: torch.arange(4, dtype=torch.int32)), key_named(B_HEAD_OUT),
                 id="attack3-int-tensor"),
    pytest.param(tensor(B_HEAD_OUT, lambda v: torch.ones(4, dtype=torch.bool)), key_named(B_HEAD_OUT),
                 id="attack3-bool-tensor"),
    pytest.param(tensor(W_HEAD_OUT, lambda v: v.index_fill(1, torch.tensor([3]), float("nan"))), key_named(W_HEAD_OUT),
                 id="attack3-nan-tensor"),
    pytest.param(tensor(PROMPTS, lambda v: v.index_fill(0, torch.tensor([1]), float("inf"))), key_named(PROMPTS),
                 id="attack3-inf-tensor"),
    pytest.param(empty_weights, re.escape(WEIGHTS), id="attack3-empty-weights-file"),
    pytest.param(no_tensors, rf"{re.escape(WEIGHTS)}|head\.", id="attack3-weights-file-without-tensors"),
    # corrupt adapter_config.json
    pytest.param(replace(ADAPTER_CONFIG, lambda ctx: b"{not json"), re.escape(ADAPTER_CONFIG),
                 id="config-invalid-json"),
    pytest.param(replace(ADAPTER_CONFIG, lambda ctx: b"[1, 2, 3]"), re.escape(ADAPTER_CONFIG), id="config-json-list"),
    pytest.param(drop_peft_type, re.escape(ADAPTER_CONFIG), id="config-without-peft_type"),
]


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize(("mutate", "match"), CRAFTED)
def test_crafted_adapter_folder_is_refused(lab, tmp_path, mutate, match, loader):
    """Each crafted folder (model_settings injection, attack 1, attack 2 disguises and pickled backbones, attack 3
    weight tampering, corrupt adapter_config.json) is refused with AdapterLoadError naming the file or key; no
    payload runs and no model with smuggled weights is returned."""
    folder = copy(lab.folders["map"], tmp_path)
    marker = tmp_path / "PWNED"
    mutate(folder, SimpleNamespace(lab=lab, tmp_path=tmp_path, marker=marker))
    loaded: list[Any] = []

    def load() -> None:
        loaded.append(LOADERS[loader](str(folder)))

    try:
        refused(load, match=match, marker=marker)
    except AssertionError:
        if loaded:  # report what the accepted adapter did to the model
            embedding = loaded[0].backbone.text_model.embeddings.token_embedding.weight
            state = "OVERWRITTEN by the smuggled tensor" if bool((embedding == 7.0).all()) else "untouched"
            pytest.fail(f"the crafted adapter loaded without an error (backbone token embedding {state})")
        raise


# ---- attacks 1 and 2 through the Hub --------------------------------------------------------------------------------
def hub_adapter_files(lab: SimpleNamespace, repo_id: str, backbone: str, settings: dict | None = None) -> dict:
    """The clean MAP adapter as repo ``repo_id`` naming ``backbone``, with extra model_settings."""
    files = folder_files(lab.folders["map"])
    adapter_config = json.loads(files[ADAPTER_CONFIG])
    adapter_config["base_model_name_or_path"] = repo_id
    adapter_config["model_settings"].update(settings or {})
    config = {**json.loads(files[CONFIG]), "backbone_name_or_path": backbone}
    return {**files, ADAPTER_CONFIG: json.dumps(adapter_config).encode(), CONFIG: json.dumps(config).encode()}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_attack1_hub_wrapper_backbone_pickle_with_weights_only_false(hub, lab, tmp_path, loader):
    """Attack 1 through the Hub: an adapter repo with model_settings weights_only=false (and dtype=auto) naming a
    backbone repo that is a wrapper checkpoint (model_type hf_missing, dtype unset) with only a pickled
    pytorch_model.bin: refused, the pickle is never downloaded and never runs."""
    marker = tmp_path / "PWNED"
    payload_checkpoint(tmp_path / "payload.bin", marker)
    wrapper_config = {**read_json(lab.wrapper / CONFIG), "dtype": None}
    put_repo(hub, f"evil/wrapper-{loader}", {CONFIG: json.dumps(wrapper_config).encode(),
                                             "pytorch_model.bin": (tmp_path / "payload.bin").read_bytes()})
    repo = f"evil/attack1-{loader}"
    injected = {"weights_only": False, "dtype": "auto"}
    put_repo(hub, repo, hub_adapter_files(lab, repo, f"evil/wrapper-{loader}", injected))
    hub.requests.clear()
    refused(lambda: LOADERS[loader](repo), match=r"weights_only|safetensors|dtype", marker=marker)
    assert not downloaded(hub), "a pickle was downloaded"


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.bin", "weights.pt", "last.ckpt", "sub/pytorch_model.bin"])
def test_attack2_hub_backbone_without_safetensors(hub, lab, tmp_path, name):
    """Attack 2 through the Hub: a clean adapter repo naming a backbone repo that has no safetensors, only a
    pickle (pytorch_model.bin, model.bin, weights.pt, *.ckpt, or in a subfolder): AdapterLoadError mentioning
    safetensors; the pickle is never downloaded and never runs."""
    marker = tmp_path / "PWNED"
    payload_checkpoint(tmp_path / "payload.bin", marker)
    backbone = f"evil/clip-{name.replace('/', '-')}"
    put_repo(hub, backbone, {CONFIG: (lab.backbone / CONFIG).read_bytes(),
                             name: (tmp_path / "payload.bin").read_bytes()})
    repo = f"evil/attack2-{name.replace('/', '-')}"
    put_repo(hub, repo, hub_adapter_files(lab, repo, backbone))
    hub.requests.clear()
    refused(lambda: AutoModel.from_pretrained(repo), match="safetensors", marker=marker)
    assert not downloaded(hub), "a pickle was downloaded"


@pytest.mark.parametrize("name", [WEIGHTS, CONFIG])
def test_attack2_hub_pickle_disguised_as_adapter_file(hub, lab, tmp_path, name):
    """Attack 2 through the Hub: a pickle uploaded as adapter_model.safetensors or config.json is refused with an
    error naming the file, and never unpickled."""
    marker = tmp_path / "PWNED"
    repo = f"evil/disguised-{name}"
    put_repo(hub, repo, {**hub_adapter_files(lab, repo, "tiny/clip"), name: payload_pickle(marker)})
    refused(lambda: M.from_pretrained(repo), match=rf"(?<![_\w]){re.escape(name)}", marker=marker)


@pytest.mark.parametrize("backbone", ["absolute", "dotdot"])
def test_hub_adapter_may_not_name_a_local_backbone(hub, lab, backbone):
    """An adapter pulled from the Hub that names a local path (absolute, or containing '..') as its backbone is
    refused; the user may still choose a backbone in code with backbone_name_or_path=."""
    path = str(lab.backbone) if backbone == "absolute" else os.path.relpath(lab.backbone)
    if backbone == "dotdot" and ".." not in path:
        path = f"{lab.backbone.parent}/../{lab.backbone.parent.name}/{lab.backbone.name}"
    repo = f"evil/local-{backbone}"
    put_repo(hub, repo, hub_adapter_files(lab, repo, path))
    refused(lambda: AutoModel.from_pretrained(repo), match=re.escape(path))
    loaded = M.from_pretrained(repo, backbone_name_or_path="tiny/clip")
    assert torch.equal(logits_of(loaded, lab.batch), lab.logits["map"])


DEEP = "../" * 6  # from <cache>/models--org--name/snapshots/<sha>/ this climbs above the cache


@pytest.mark.parametrize("name", ["../evil.json", f"{DEEP}escape.json", f"sub/{DEEP}{DEEP}escape.json", "ABSOLUTE"])
def test_hub_file_names_cannot_escape_the_cache(hub, lab, name):
    """Traversal names in a Hub repo ('../x', 'sub/../../x', '/abs'): the adapter loads without those files or
    the load is refused with AdapterLoadError; nothing is written outside the Hub cache."""
    name = f"{hub.base.parent}/escape_abs.json" if name == "ABSOLUTE" else name
    repo = f"evil/traversal-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    put_repo(hub, repo, {**hub_adapter_files(lab, repo, "tiny/clip"), name: b'{"escaped": true}'})
    before = set(hub.base.parent.rglob("*"))
    loaded, outcome = None, None
    try:
        loaded = AutoModel.from_pretrained(repo)
    except Exception as err:
        outcome = err
    written = [p for p in set(hub.base.parent.rglob("*")) - before if p.is_file() and hub.cache not in p.parents]
    assert not written, f"files written outside the Hub cache: {written}"
    assert not Path(f"{hub.base.parent}/escape_abs.json").exists()
    assert outcome is None or isinstance(outcome, AdapterLoadError), f"neither loaded nor AdapterLoadError: {outcome!r}"
    if loaded is not None:
        assert torch.equal(logits_of(loaded, lab.batch), lab.logits["map"])


def test_hub_pickle_behind_a_traversal_name_never_runs(hub, lab, tmp_path):
    """A pickle named 'sub/../../x.bin' in an adapter repo is refused or skipped, never downloaded or unpickled."""
    marker = tmp_path / "PWNED"
    repo = "evil/traversal-pickle"
    put_repo(hub, repo, {**hub_adapter_files(lab, repo, "tiny/clip"), f"sub/{DEEP}x.bin": payload_pickle(marker)})
    hub.requests.clear()
    outcome = None
    try:
        AutoModel.from_pretrained(repo)
    except Exception as err:
        outcome = err
    assert not marker.exists(), "the pickled payload ran"
    assert not downloaded(hub), "a pickle was downloaded"
    assert outcome is None or isinstance(outcome, AdapterLoadError), f"neither loaded nor AdapterLoadError: {outcome!r}"


# ---- positive controls ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("where", ["local", "hub"])
def test_clean_adapter_still_loads_bit_identically(hub, lab, loader, where):
    """Positive control: the clean adapter (a local folder, and pushed to the fake Hub) loads with bit-identical
    logits, so the refusals above are specific to the crafted content."""
    source = str(lab.folders["map"]) if where == "local" else "org/clean-map"
    hub.requests.clear()
    loaded = LOADERS[loader](source)
    assert isinstance(loaded, M)
    assert torch.equal(logits_of(loaded, lab.batch), lab.logits["map"])
    assert not downloaded(hub)


@pytest.mark.parametrize("method", ["memprompt", "rep", "vilt-rep"])
def test_clean_adapters_of_other_methods_load(lab, method):
    """Positive control for the adapters whose sizes attack 5 inflates."""
    batch = lab.vilt_batch if method.startswith("vilt") else lab.batch
    assert torch.equal(logits_of(M.from_pretrained(str(lab.folders[method])), batch), lab.logits[method])


# ---- attack 4: REDEEM -------------------------------------------------------------------------------------------
@pytest.fixture
def no_faiss_reader(monkeypatch):
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("faiss deserialised redeem_index.faiss")

    for name in ("read_index", "read_index_binary", "deserialize_index", "deserialize_index_binary"):
        monkeypatch.setattr(faiss, name, forbidden, raising=False)


def garbage_index(folder: Path) -> None:
    (folder / INDEX_FILE).write_bytes(os.urandom(4096))


def misleading_index(folder: Path) -> None:
    """A valid faiss index with the bank's size but unrelated vectors (it would misroute every retrieval)."""
    bank = load_file(folder / BANK_FILE)
    rows, width = bank["query.text"].shape[0], bank["query.text"].shape[1] + bank["query.image"].shape[1]
    faiss.write_index(build_index(np.random.default_rng(0).normal(size=(rows, width)).astype(np.float32), "flat"),
                      str(folder / INDEX_FILE))


def pickle_as_index(folder: Path) -> None:
    (folder / INDEX_FILE).write_bytes(payload_pickle(folder.parent / "PWNED"))


def no_index(folder: Path) -> None:
    (folder / INDEX_FILE).unlink(missing_ok=True)


@pytest.mark.parametrize("craft", [garbage_index, misleading_index, pickle_as_index, no_index])
def test_attack4_redeem_index_is_never_deserialised(redeem, tmp_path, no_faiss_reader, craft):
    """Attack 4: a crafted, garbage or missing redeem_index.faiss is never read by faiss; the adapter either loads
    with the index rebuilt from redeem_bank.safetensors (logits equal the saved model's, retrieval finds the
    same neighbours) or is refused with AdapterLoadError."""
    folder = copy(redeem.folder, tmp_path)
    craft(folder)
    try:
        loaded = M.from_pretrained(str(folder))
    except AdapterLoadError:
        assert not (tmp_path / "PWNED").exists()
        return
    assert not (tmp_path / "PWNED").exists()
    assert torch.equal(logits_of(loaded, redeem.batch), redeem.logits)
    bank = memory_bank_of(loaded)
    assert len(bank) == redeem.bank_len
    assert np.array_equal(bank.search(redeem.queries, 3)[1], redeem.neighbours)


def test_attack4_clean_redeem_adapter_loads_without_faiss_reader(redeem, no_faiss_reader):
    """Attack 4 positive control: the untouched REDEEM folder loads without deserialising its faiss index."""
    loaded = M.from_pretrained(str(redeem.folder))
    assert torch.equal(logits_of(loaded, redeem.batch), redeem.logits)
    assert np.array_equal(memory_bank_of(loaded).search(redeem.queries, 3)[1], redeem.neighbours)


def _bank_edit(change: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], None]:
    def craft(folder: Path) -> None:
        from safetensors import safe_open
        from safetensors.numpy import save_file as save_numpy

        with safe_open(str(folder / BANK_FILE), framework="np") as f:
            metadata = f.metadata()
            arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        change(arrays)
        save_numpy(arrays, str(folder / BANK_FILE), metadata)
    return craft


def _huge_header(folder: Path) -> None:
    """A bank whose header claims a [2**40, 32] float16 query array backed by a few bytes."""
    path = folder / BANK_FILE
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    header["query.text"]["shape"] = [2**40, header["query.text"]["shape"][1]]
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + raw[8 + length:])


def _nan_queries(arrays: dict[str, np.ndarray]) -> None:
    arrays["query.image"] = arrays["query.image"].copy()
    arrays["query.image"][2] = np.nan


BANKS = [
    pytest.param(_bank_edit(lambda a: a.__setitem__("query.text", a["query.text"][:-1])), id="inconsistent-rows"),
    pytest.param(_bank_edit(lambda a: a.__setitem__("tokens.text", a["tokens.text"].astype(np.int32))),
                 id="int-tokens"),
    pytest.param(_bank_edit(lambda a: a.__setitem__("query.text", a["query.text"].astype(np.float64))),
                 id="float64-queries"),
    pytest.param(_bank_edit(_nan_queries), id="nan-queries"),
    pytest.param(_huge_header, id="header-claims-huge-shape"),
    pytest.param(lambda folder: (folder / BANK_FILE).write_bytes(payload_pickle(folder.parent / "PWNED")),
                 id="pickle-disguised-as-bank"),
    pytest.param(lambda folder: (folder / BANK_FILE).write_bytes(b""), id="empty-bank-file"),
]


@pytest.mark.parametrize("craft", BANKS)
def test_attack4_crafted_redeem_bank_is_refused(redeem, tmp_path, no_faiss_reader, craft):
    """Attack 4: a crafted redeem_bank.safetensors (row counts that disagree, wrong dtypes, NaN query vectors, a
    header that claims a huge shape, a pickle in disguise, an empty file) is refused with a ValueError
    (AdapterLoadError or BankError) naming redeem_bank.safetensors, quickly and without running any payload."""
    folder = copy(redeem.folder, tmp_path)
    craft(folder)
    start = time.perf_counter()
    with bounded_memory():
        error = refused(lambda: M.from_pretrained(str(folder)), match=re.escape(BANK_FILE),
                        marker=tmp_path / "PWNED", error=ValueError)
    assert isinstance(error, AdapterLoadError | BankError)
    assert time.perf_counter() - start < QUICK_S


# ---- attack 5: memory budget ----------------------------------------------------------------------------------------
def option(**values: Any) -> Callable[[dict], None]:
    return lambda c: c.update(values)


def settings_of(**values: Any) -> Callable[[dict], None]:
    return lambda c: c["model_settings"].update(values)


BUDGET = r"budget|bytes"
HOSTILE_SIZES = [
    pytest.param("memprompt", option(memory_size=65536, prompt_length=65536), BUDGET, id="memprompt-65536"),
    pytest.param("rep", option(prompt_length=60000, shared_dim=60000), rf"{BUDGET}|prompt_length", id="rep-60000"),
    pytest.param("vilt-rep", lambda c: (option(prompt_length=30000, shared_dim=60000)(c),  # 2 x 30000 slots fit
                                        settings_of(max_text_len=60000)(c)), BUDGET, id="vilt-rep-60000"),
    pytest.param("map", settings_of(max_text_len=10**7), rf"{BUDGET}|max_text_len", id="max_text_len-1e7"),
    pytest.param("map", settings_of(head_hidden_ratio=10**6), rf"{BUDGET}|head_hidden_ratio",
                 id="head_hidden_ratio-1e6"),
    pytest.param("map", settings_of(num_labels=10**9), rf"{BUDGET}|num_labels", id="num_labels-1e9"),
    pytest.param("memprompt", lambda c: (option(memory_size=65536, prompt_length=65536)(c),
                                         settings_of(max_adapter_bytes=10**15)(c)),
                 rf"{BUDGET}|max_adapter_bytes", id="budget-raised-by-the-file"),
]


@pytest.mark.parametrize(("method", "change", "match"), HOSTILE_SIZES)
def test_attack5_hostile_sizes_are_refused_before_allocating(lab, tmp_path, method, change, match):
    """Attack 5: configs that would allocate tens of GiB (MemPrompt memory 65536 x 65536, REP 60000-token buffers
    of width 60000, max_text_len 1e7, head_hidden_ratio 1e6, a billion labels, a file that raises its own budget)
    are refused with AdapterLoadError naming the budget (or, for a setting or option past its documented range,
    naming that key), in seconds and without allocating (the address space is capped meanwhile)."""
    folder = copy(lab.folders[method], tmp_path)
    edit_config(folder, change)
    start = time.perf_counter()
    with bounded_memory():
        refused(lambda: M.from_pretrained(str(folder)), match=match)
    assert time.perf_counter() - start < QUICK_S


@pytest.mark.parametrize("loader", list(LOADERS))
def test_attack5_budget_is_set_in_code(lab, loader):
    """Attack 5: the budget is hf_missing.loading.MAX_ADAPTER_BYTES (a few GiB) unless the caller passes
    max_adapter_bytes= in code: the clean adapter is refused under 1000 bytes and accepted with the default."""
    budget = getattr(hf_missing.loading, "MAX_ADAPTER_BYTES", None)
    assert isinstance(budget, int) and 2**29 <= budget <= 2**36, f"hf_missing.loading.MAX_ADAPTER_BYTES is {budget!r}"
    refused(lambda: LOADERS[loader](str(lab.folders["map"]), max_adapter_bytes=1000), match=BUDGET)
    assert torch.equal(logits_of(LOADERS[loader](str(lab.folders["map"])), lab.batch), lab.logits["map"])


# ---- fuzzing adapter_config.json ------------------------------------------------------------------------------------
VALUES = st.one_of(
    st.integers(-3, 70), st.sampled_from([10**7, 10**12, 2**63, -(2**63), -1, 0]), st.booleans(), st.none(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.lists(st.integers(-2, 5), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(-2, 5) | st.text(max_size=3), max_size=3),
    st.fixed_dictionaries({"a": st.dictionaries(st.text(max_size=3), st.none(), max_size=2)}),
)
FIELDS = ["prompt_length", "prompt_depth", "prompt_type", "model_settings.num_labels", "model_settings.id2label",
          "model_settings.label2id", "model_settings.problem_type", "model_settings.missing_policy",
          "model_settings.modalities", "model_settings.max_text_len", "model_settings.head_hidden_ratio",
          "model_settings.regression_loss"]


@pytest.fixture(scope="module")
def fuzz_folder(lab, tmp_path_factory):
    return copy(lab.folders["map"], tmp_path_factory.mktemp("fuzz"))


# No shrinking phase: a failure reports the first failing example, which keeps a failing run short.
@settings(max_examples=40, deadline=None, database=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(edits=st.dictionaries(st.sampled_from(FIELDS), VALUES, min_size=1, max_size=3))
def test_fuzzed_map_adapter_config_loads_or_raises_value_error(lab, fuzz_folder, edits):
    """Fuzzed adapter_config.json values (method options and model_settings: ints, huge and negative ints, floats,
    NaN, bools, strings, lists, nested dicts, None) on the MAP adapter for tiny CLIP either load or raise
    ValueError (AdapterLoadError is one): never another exception type, never a MemoryError, and quickly."""
    config = read_json(lab.folders["map"] / ADAPTER_CONFIG)
    for field, value in edits.items():
        target, _, name = field.rpartition(".")
        (config[target] if target else config)[name] = value
    (fuzz_folder / ADAPTER_CONFIG).write_text(json.dumps(config, allow_nan=True))
    start = time.perf_counter()
    try:
        with bounded_memory():
            M.from_pretrained(str(fuzz_folder))
    except ValueError:
        pass
    except Exception as err:
        pytest.fail(f"{edits} raised {type(err).__name__}: {err}")
    assert time.perf_counter() - start < QUICK_S, f"{edits} took {time.perf_counter() - start:.1f}s"


# ---- saves ----------------------------------------------------------------------------------------------------------
def test_save_into_a_full_checkpoint_folder_is_refused(lab, tmp_path):
    """An adapter saved into a folder that holds a full checkpoint (model.safetensors) is refused with ValueError,
    and the checkpoint is left as it was (no folder that is both a checkpoint and an adapter)."""
    target = tmp_path / "full"
    shutil.copytree(lab.wrapper, target)
    before = folder_files(target)
    model = M.from_pretrained(str(lab.folders["map"]))
    refused(lambda: model.save_pretrained(target), match=r"model\.safetensors", error=ValueError)
    assert folder_files(target) == before


def _failing_writer(real: Callable[..., Any]) -> Callable[..., Any]:
    """A safetensors writer that writes the first half of the file, then fails (disk full)."""
    def write(tensors: dict, filename: Any, *args: Any, **kwargs: Any) -> None:
        metadata = kwargs.get("metadata", args[0] if args else None)
        data = safetensors.torch.save(tensors, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device (injected by the test)")
    return write


def test_failed_save_leaves_the_previous_adapter_loading(lab, tmp_path, monkeypatch):
    """A save that fails midway (the weights writer dies after writing part of the file) leaves the previous
    adapter folder loading exactly as before: saves are atomic."""
    target = copy(lab.folders["map"], tmp_path, "adapter")
    model = M.from_pretrained(str(target))
    perturb(model)
    real = safetensors.torch.save_file
    failing = _failing_writer(real)
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("hf_missing", "transformers", "peft", "safetensors") and module is not None:
            for attr in ("save_file", "safe_save_file"):
                if getattr(module, attr, None) is real:
                    monkeypatch.setattr(module, attr, failing)
    with pytest.raises(OSError, match="injected by the test"):
        model.save_pretrained(target)
    monkeypatch.undo()
    loaded = M.from_pretrained(str(target))
    assert torch.equal(logits_of(loaded, lab.batch), lab.logits["map"])


def test_trainer_save_model_output_loads_the_adapter(lab, tmp_path):
    """Trainer.save_model(d) of an adapter model, then AutoModel.from_pretrained(d), gives back the adapter with
    bit-identical logits."""
    model = M.from_pretrained(str(lab.folders["map"]))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", disable_tqdm=True)
    Trainer(model=model, args=args).save_model(str(tmp_path / "saved"))
    loaded = AutoModel.from_pretrained(str(tmp_path / "saved"))
    assert isinstance(loaded, M) and adapters_injected(loaded)
    assert torch.equal(logits_of(loaded, lab.batch), lab.logits["map"])

