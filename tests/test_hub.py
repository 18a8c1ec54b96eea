"""Push and pull adapters through an in-process fake Hub (httpx2.MockTransport: no sockets), the model card,
bit-identical round trips for every registered method, refusal of pickles and validation errors."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from urllib.parse import unquote

import httpx2
import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.utils._http import default_client_factory
from peft import PeftModel
from PIL import Image
from transformers import AutoModel

import hf_missing
from hf_missing import MissingModalityCollator, MissingModalityForClassification
from hf_missing.data.synthetic import tiny_backbone, tiny_processor
from hf_missing.hub import results_by_pattern
from hf_missing.loading import AdapterLoadError
from hf_missing.methods import METHODS, prepare_for_training
from tests.conftest import make_batch, perturbed

# Small options per method on the tiny 2-layer backbones; a method missing here runs with its defaults.
TINY_OPTIONS = {
    "baseline": {},
    "map": {"prompt_length": 4, "prompt_depth": 2},
    "rep": {"prompt_length": 4, "prompt_depth": 2, "shared_dim": 8, "mlp_reduction": 4},
    "memprompt": {"prompt_length": 2, "memory_size": 6, "top_n": 2, "prompt_layers": [0, 1]},
}
RESULTS = {"eval_loss": 0.9, "eval_accuracy": 0.61, "eval_complete/accuracy": 0.8, "eval_complete/count": 14.0,
           "eval_missing_text/accuracy": 0.55, "eval_missing_image/accuracy": 0.48}


class FakeHub:
    """Enough of the Hub's HTTP API for create_repo, upload_folder, hf_hub_download, snapshot_download and
    transformers/peft loading; repos live in memory and every request is recorded."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.routes = [
            ("POST", r"/api/repos/create", self._create),
            ("POST", r"/api/validate-yaml", lambda request: httpx2.Response(200, json={})),
            ("POST", r"/api/models/([^/]+/[^/]+)/preupload/[^/]+", self._preupload),
            ("POST", r"/api/models/([^/]+/[^/]+)/commit/[^/]+", self._commit),
            ("GET", r"/api/models/([^/]+/[^/]+)/tree/[^/]+(?:/.*)?", self._tree),
            ("GET", r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", self._info),
            ("*", r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", self._resolve),
        ]

    def client(self) -> httpx2.Client:
        return httpx2.Client(transport=httpx2.MockTransport(self.handle), follow_redirects=True)

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        path = unquote(request.url.path)
        self.requests.append((request.method, path))
        for method, pattern, handler in self.routes:
            match = re.fullmatch(pattern, path)
            if match and method in (request.method, "*"):
                if match.groups() and match.group(1) not in self.repos:
                    return httpx2.Response(404, headers={"X-Error-Code": "RepoNotFound"})
                return handler(request, *match.groups())
        return httpx2.Response(400, json={"error": f"FakeHub has no route for {request.method} {path}"})

    def files(self, repo_id: str) -> dict[str, bytes]:
        return self.repos[repo_id]["files"]

    def _create(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        self.repos.setdefault(repo_id, {"sha": "0" * 40, "files": {}})
        return httpx2.Response(200, json={"url": f"{constants.ENDPOINT}/{repo_id}", "name": repo_id})

    def _preupload(self, request: httpx2.Request, repo_id: str) -> httpx2.Response:
        files = json.loads(request.content)["files"]
        return httpx2.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular",
                                                     "shouldIgnore": False} for f in files]})

    def _commit(self, request: httpx2.Request, repo_id: str) -> httpx2.Response:
        repo = self.repos[repo_id]
        for line in request.content.decode().splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                repo["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        repo["sha"] = hashlib.sha1(repr(sorted(repo["files"].items())).encode()).hexdigest()
        return httpx2.Response(200, json={"commitUrl": f"{constants.ENDPOINT}/{repo_id}/commit/{repo['sha']}",
                                          "commitOid": repo["sha"]})

    def _tree(self, request: httpx2.Request, repo_id: str) -> httpx2.Response:
        tree = [{"type": "file", "path": p, "size": len(c), "oid": hashlib.sha1(c).hexdigest()}
                for p, c in sorted(self.files(repo_id).items())]
        return httpx2.Response(200, json=tree)

    def _info(self, request: httpx2.Request, repo_id: str) -> httpx2.Response:
        repo = self.repos[repo_id]
        return httpx2.Response(200, json={"id": repo_id, "sha": repo["sha"], "private": False,
                                          "siblings": [{"rfilename": p} for p in sorted(repo["files"])]})

    def _resolve(self, request: httpx2.Request, repo_id: str, filename: str) -> httpx2.Response:
        repo = self.repos[repo_id]
        if filename not in repo["files"]:
            return httpx2.Response(404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo["sha"]})
        content = repo["files"][filename]
        headers = {"X-Repo-Commit": repo["sha"], "ETag": f'"{hashlib.sha1(content).hexdigest()}"',
                   "Content-Length": str(len(content))}
        return httpx2.Response(200, headers=headers, content=b"" if request.method == "HEAD" else content)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A fake Hub holding the tiny CLIP and ViLT backbones as ``tiny/clip`` and ``tiny/vilt``; online even when
    the environment sets HF_HUB_OFFLINE=1 (the fake Hub is in-process)."""
    fake = FakeHub()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        huggingface_hub.set_client_factory(fake.client)
        try:
            for kind in ("clip", "vilt"):
                tiny_backbone(kind).push_to_hub(f"tiny/{kind}")
            yield fake
        finally:
            huggingface_hub.set_client_factory(default_client_factory)


def _trained(backbone: str, method: str) -> MissingModalityForClassification:
    """A wrapper around the Hub backbone with ``method`` injected and its trainable tensors perturbed."""
    model = MissingModalityForClassification.from_pretrained(f"tiny/{backbone}", num_labels=4, adapter=method,
                                                             adapter_options=TINY_OPTIONS.get(method, {}))
    return perturbed(model)


def _logits(model, batch) -> torch.Tensor:
    torch.manual_seed(1)  # ViLT draws a random patch order on every forward
    with torch.no_grad():
        return model(**batch).logits


# ---- push ---------------------------------------------------------------------------------------
def test_push_uploads_adapter_card_and_plot(hub, shapes_missing, tmp_path):
    plot = tmp_path / "curve.png"
    Image.new("RGB", (8, 8)).save(plot)
    model = _trained("clip", "map")
    model.push_to_hub("org/clip-map", results=RESULTS, dataset="shapes", missing=shapes_missing, plot=plot)
    files = hub.files("org/clip-map")
    assert sorted(files) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "config.json",
                             "robustness.png"]
    assert files["robustness.png"] == plot.read_bytes()
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "org/clip-map"
    assert json.loads(files["config.json"])["backbone_name_or_path"] == "tiny/clip"

    card = ModelCard(files["README.md"].decode())
    assert card.data.base_model == "tiny/clip" and card.data.library_name == "peft"
    assert {"hf-missing", "missing-modality", "map", "clip"} <= set(card.data.tags)
    rows = {(r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert rows == {("all", "accuracy"): 0.61, ("complete", "accuracy"): 0.8, ("missing_text", "accuracy"): 0.55,
                    ("missing_image", "accuracy"): 0.48}
    assert {r.dataset_name for r in card.data.eval_results} == {"shapes"}
    text = card.text
    assert METHODS["map"].paper in text and "lee2023multimodal" in text
    assert f"{len(files['adapter_model.safetensors'])} bytes" in text
    assert "| rate | `0.7` |" in text and "| protocol | `map` |" in text and "| seed | `0` |" in text
    assert "| policy | `dummy` |" in text and "| pattern | `both` |" in text
    assert "| missing_image | 0.4800 |" in text and "![Robustness to missing modalities](robustness.png)" in text
    assert 'AutoModel.from_pretrained("org/clip-map")' in text
    assert 'PeftModel.from_pretrained(base, "org/clip-map")' in text


def test_push_adapter_from_a_saved_folder(hub, tmp_path):
    model = _trained("vilt", "baseline")
    model.save_pretrained(tmp_path / "adapter")
    hf_missing.hub.push_adapter(tmp_path / "adapter", "org/vilt-baseline")
    card = ModelCard(hub.files("org/vilt-baseline")["README.md"].decode())
    assert card.data.eval_results is None and "No evaluation results were given." in card.text
    assert "Not recorded: pass `missing=`" in card.text
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] != "org/vilt-baseline"  # the user's folder is left untouched


def test_push_errors(hub):
    bare = MissingModalityForClassification.from_pretrained("tiny/clip", num_labels=4)
    with pytest.raises(ValueError, match="no adapter injected"):
        hf_missing.hub.push_adapter(bare, "org/bare")
    with pytest.raises(ValueError, match="results need dataset="):
        _trained("clip", "baseline").push_to_hub("org/x", results=RESULTS)
    assert "org/bare" not in hub.repos and "org/x" not in hub.repos


def test_results_by_pattern_reads_trainer_and_nested_results():
    assert results_by_pattern(RESULTS) == {"all": {"accuracy": 0.61}, "complete": {"accuracy": 0.8},
                                           "missing_text": {"accuracy": 0.55}, "missing_image": {"accuracy": 0.48}}
    assert results_by_pattern({"complete": {"f1_macro": 0.5, "count": 3}}) == {"complete": {"f1_macro": 0.5}}


# ---- pull ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", hf_missing.list_methods())
def test_round_trip_is_bit_identical_for_every_method(hub, shapes_missing, method):
    model = _trained("clip", method)
    # REDEEM / RAGPT build their memory bank here and retrieve neighbours; the others pass through.
    base_collator = MissingModalityCollator(tiny_processor("clip"))
    data, collator = prepare_for_training(model, shapes_missing["train"], base_collator)
    batch = collator([data[i] for i in range(8)])
    reference = _logits(model, batch)
    repo = f"org/clip-{method}"
    model.push_to_hub(repo)
    peft_model = PeftModel.from_pretrained(MissingModalityForClassification.from_pretrained("tiny/clip", num_labels=4),
                                           repo)
    loaded = {"AutoModel": AutoModel.from_pretrained(repo),
              "MissingModalityForClassification": MissingModalityForClassification.from_pretrained(repo),
              "PeftModel": peft_model}
    for name, reloaded in loaded.items():
        assert torch.equal(_logits(reloaded.eval(), batch), reference), name
    assert isinstance(loaded["AutoModel"], MissingModalityForClassification)


def test_vilt_round_trip_downloads_no_docs_or_images(hub, shapes_missing, tmp_path):
    plot = tmp_path / "curve.png"
    Image.new("RGB", (8, 8)).save(plot)
    model = _trained("vilt", "map")
    batch = make_batch(shapes_missing["train"], "vilt", n=8)
    model.push_to_hub("org/vilt-map", plot=plot)
    hub.requests.clear()
    loaded = AutoModel.from_pretrained("org/vilt-map").eval()
    assert torch.equal(_logits(loaded, batch), _logits(model, batch))
    fetched = {path.rsplit("/", 1)[-1] for method, path in hub.requests if method == "GET" and "/resolve/" in path}
    assert "adapter_model.safetensors" in fetched and not fetched & {"README.md", "robustness.png"}


def test_non_adapter_repo_loads_as_a_backbone(hub):
    model = MissingModalityForClassification.from_pretrained("tiny/vilt", num_labels=3)
    assert model.config.backbone_name_or_path == "tiny/vilt" and model.config.num_labels == 3


# ---- refusals and validation --------------------------------------------------------------------
def _pickled_adapter(tmp_path: Path, repo_id: str) -> Path:
    """An adapter folder for ``repo_id`` whose weights are a pickle (adapter_model.bin), not safetensors."""
    folder = tmp_path / "pickled"
    _trained("clip", "map").save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": repo_id}))
    weights = folder / "adapter_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(weights), folder / "adapter_model.bin")
    weights.unlink()
    return folder


def test_pickled_adapters_are_refused_locally_and_on_the_hub(hub, tmp_path):
    folder = _pickled_adapter(tmp_path, "org/pickled")
    with pytest.raises(AdapterLoadError, match=r"pickled file\(s\) \['adapter_model.bin'\].*safetensors only"):
        MissingModalityForClassification.from_pretrained(folder)
    HfApi().create_repo("org/pickled")
    HfApi().upload_folder(repo_id="org/pickled", folder_path=folder)
    hub.requests.clear()
    for load in (AutoModel.from_pretrained, MissingModalityForClassification.from_pretrained):
        with pytest.raises(AdapterLoadError, match="pickled"):
            load("org/pickled")
    assert not any(path.endswith(".bin") for _, path in hub.requests)
    with pytest.raises(ValueError, match="pickled"):
        hf_missing.hub.push_adapter(folder, "org/pickled-again")


def test_trainer_arguments_pickle_is_never_downloaded(hub, shapes_missing, tmp_path):
    model = _trained("clip", "baseline")
    model.save_pretrained(tmp_path / "adapter")
    HfApi().create_repo("org/with-args")
    HfApi().upload_folder(repo_id="org/with-args", folder_path=tmp_path / "adapter")
    HfApi().upload_file(path_or_fileobj=b"not a real pickle", path_in_repo="training_args.bin", repo_id="org/with-args")
    hub.requests.clear()
    batch = make_batch(shapes_missing["train"], "clip", n=4)
    loaded = MissingModalityForClassification.from_pretrained("org/with-args", backbone_name_or_path="tiny/clip")
    assert torch.equal(_logits(loaded.eval(), batch), _logits(model, batch))
    assert not any(path.endswith(".bin") for _, path in hub.requests)


def _edit(config: dict, key: str, value) -> None:
    target = config
    *parents, last = key.split(".")
    for part in parents:
        target = target[part]
    target[last] = value


@pytest.mark.parametrize(("key", "value", "message"), [
    ("prompt_length", 10**7, r"prompt_length.*exceed"),
    ("prompt_type", "sideways", "prompt_type must be one of"),
    ("peft_type", "HFM_NOPE", "method 'nope', which this hf_missing does not know"),
    ("peft_type", "LORA", "not an hf_missing adapter"),
    ("model_settings.num_labels", 10**9, "num_labels must be an integer"),
    ("backbone_signature.streams.text", [64, 2],
     r"streams \{'text': \[64, 2\].*\(\[hidden size, layers\]\).*tiny/clip is a clip"),
    ("backbone_signature.streams.vision", [32, 12], r"\[32, 12\]"),
    ("model_settings.modalities", ["text", "audio"], r"modalities \['text', 'audio'\]"),
])
def test_invalid_adapter_configs_fail_before_any_weight_is_read(hub, tmp_path, monkeypatch, key, value, message):
    folder = tmp_path / "adapter"
    _trained("clip", "map").save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    _edit(config, key, value)
    (folder / "adapter_config.json").write_text(json.dumps(config))

    def touched(*args, **kwargs):
        raise AssertionError("weights were loaded before the adapter config was validated")

    monkeypatch.setattr(MissingModalityForClassification, "_load_base", touched)
    monkeypatch.setattr(MissingModalityForClassification, "load_adapter", touched)
    with pytest.raises(AdapterLoadError, match=message):
        MissingModalityForClassification.from_pretrained(folder)


def test_adapter_onto_the_wrong_backbone_fails_clearly(hub, tmp_path):
    _trained("clip", "map").save_pretrained(tmp_path / "adapter")
    with pytest.raises(AdapterLoadError, match=r"trained on a clip backbone.*tiny/vilt is a vilt"):
        MissingModalityForClassification.from_pretrained(tmp_path / "adapter", backbone_name_or_path="tiny/vilt")


def test_pipeline_loads_an_adapter_repo_by_its_hub_id(hub, shapes_missing):
    """Catches: transformers.pipeline swapping a Hub adapter id for its base model (a backbone without the head
    and adapter), or pipeline predictions that differ from the pushed model's."""
    from transformers import pipeline

    model = _trained("clip", "map").eval()
    model.push_to_hub("org/clip-map-pipeline")
    pipe = pipeline("missing-modality-classification", model="org/clip-map-pipeline",
                    processor=tiny_processor("clip"))
    sample = shapes_missing["test"][0]
    out = pipe({"text": sample["text"], "image": None}, top_k=4)
    batch = MissingModalityCollator(tiny_processor("clip"))([dict(sample, image=None, missing_type=2)])
    probs = torch.softmax(_logits(model, batch), dim=-1)[0]
    assert [o["label"] for o in out] == [model.config.id2label[i] for i in probs.argsort(descending=True).tolist()]
    assert torch.allclose(torch.tensor([o["score"] for o in out]), probs.sort(descending=True).values, atol=1e-6)
