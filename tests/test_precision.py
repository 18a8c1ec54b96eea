"""The demo's precision switch: which precision a run gets, and that bf16 really changes what the demo computes."""

import pytest
import torch
from transformers import AutoModel

from hf_missing import MissingModalityCollator
from hf_missing.demo import DemoSettings, Workspace, build_run, run_precision, stored_run
from hf_missing.precision import autocast, native_bf16, precision_arguments, resolve_precision
from hf_missing.runstore import RunStore
from tests.test_fused import tiny_config, tiny_processor

PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def _cpu_bf16(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    for name, value in zip(PROBES, (avx512_bf16, amx), strict=True):
        monkeypatch.setattr(torch.cpu, name, lambda value=value: value, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize(("avx512_bf16", "amx"), [(False, False), (True, False), (False, True), (True, True)])
def test_auto_is_bf16_exactly_where_the_cpu_multiplies_bfloat16_natively(monkeypatch, avx512_bf16, amx):
    """Guards: "auto" choosing bf16 on a CPU without AVX512-BF16 or AMX (emulated, slower than fp32), or ignoring one
    of the two instruction sets."""
    _cpu_bf16(monkeypatch, avx512_bf16, amx)
    native = avx512_bf16 or amx
    assert native_bf16(use_cpu=True) is native
    assert resolve_precision("auto", {"use_cpu": True}) == ("bf16" if native else "fp32")


def test_auto_asks_the_gpu_when_the_run_trains_on_one(monkeypatch):
    """Guards: judging a GPU run by the CPU's instruction sets (or a CPU run by the GPU's)."""
    _cpu_bf16(monkeypatch, False, False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert native_bf16(use_cpu=False) and not native_bf16(use_cpu=True)
    assert resolve_precision("auto", {"use_cpu": False}) == "bf16"
    assert resolve_precision("auto", {}) == "bf16"


def test_named_precisions_win_and_auto_keeps_a_presets_own_choice(monkeypatch):
    """Guards: "fp32" still autocasting on a bf16 machine, "auto" overriding a preset that asks for fp16 or bf16."""
    _cpu_bf16(monkeypatch, True, True)
    assert resolve_precision("fp32", {"use_cpu": True}) == "fp32"
    assert resolve_precision("bf16", {"use_cpu": True, "fp16": True}) == "bf16"
    _cpu_bf16(monkeypatch, False, False)
    assert resolve_precision("auto", {"use_cpu": True, "fp16": True}) == "fp16"
    assert resolve_precision("auto", {"use_cpu": True, "bf16": True}) == "bf16"


def test_an_unknown_precision_is_refused_with_the_choices():
    """Guards: an unknown name silently treated as fp32 (or as auto), so a typo changes what the table measures."""
    with pytest.raises(ValueError, match=r"'fp8'.*'auto', 'fp32', 'bf16'"):
        resolve_precision("fp8", {})


def test_precision_arguments_set_exactly_one_mixed_precision_flag():
    """Guards: a bf16 run leaving a preset's fp16 on (TrainingArguments refuses both) or fp32 keeping either."""
    assert precision_arguments("bf16") == {"fp16": False, "bf16": True}
    assert precision_arguments("fp16") == {"fp16": True, "bf16": False}
    assert precision_arguments("fp32") == {"fp16": False, "bf16": False}


def test_autocast_runs_matrix_products_in_the_precision_named():
    """Guards: an evaluation context that stays fp32 under bf16 (the demo would train in one precision and report
    another)."""
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with autocast("bf16", "cpu"):
        assert layer(x).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert layer(x).dtype == torch.float32


@pytest.fixture(scope="module")
def workspace(shapes, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fused")
    AutoModel.from_config(tiny_config()).save_pretrained(folder)
    return Workspace(shapes, folder, MissingModalityCollator(tiny_processor()), shapes["train"].features["label"].names)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_demo_trains_in_the_precision_it_is_given(workspace, tmp_path, precision):
    """Guards: a --precision switch that never reaches the Trainer (every run fp32 whatever the flag says)."""
    settings = DemoSettings(output_dir=str(tmp_path), methods=["map"], epochs=1, progress=False,
                            method_options={"map": {"prompt_length": 2}}, precision=precision)
    run = build_run("map", workspace, settings, 0, "both")
    assert run.trainer.args.bf16 is (precision == "bf16") and not run.trainer.args.fp16
    assert run_precision("map", workspace, settings) == precision


def test_bf16_changes_the_logits_a_demo_run_reports(workspace, tmp_path):
    """Guards: evaluation ignoring the precision (bf16 and fp32 runs would report identical numbers); the two stay
    close, as bf16 rounds the products and nothing else."""
    results = {}
    for precision in ("fp32", "bf16"):
        settings = DemoSettings(output_dir=str(tmp_path / precision), methods=["baseline"], epochs=0.01,
                                progress=False, precision=precision)
        run = build_run("baseline", workspace, settings, 0, "both")
        batch = run.collator([run.train[i] for i in range(8)])
        batch.pop("labels")
        run.model.eval()
        with torch.no_grad(), autocast(precision, "cpu"):
            results[precision] = run.model(**batch).logits.float()
    assert not torch.equal(results["fp32"], results["bf16"])
    torch.testing.assert_close(results["bf16"], results["fp32"], atol=0.1, rtol=0.05)


def test_a_stored_fp32_run_is_never_reused_for_a_bf16_table(workspace, tmp_path):
    """Guards: leaving the precision out of a stored run's settings, so that --resume mixes fp32 and bf16 runs in one
    table."""
    store = RunStore(tmp_path / "runs.json")
    fp32 = DemoSettings(output_dir=str(tmp_path), methods=["baseline"], epochs=0.01, progress=False, precision="fp32")
    stored_run(store, "baseline", workspace, fp32, 0, "both")
    bf16 = DemoSettings(**{**fp32.__dict__, "precision": "bf16"})
    with pytest.raises(ValueError, match="precision"):
        stored_run(store, "baseline", workspace, bf16, 0, "both")


def test_an_ablation_never_resumes_runs_of_another_precision(workspace):
    """Guards: ablations (which always resume) keeping the precision out of a stored run's settings, so that a bf16
    row is filled with fp32 runs; fp32 keeps the settings written before the switch, so those runs stay reusable."""
    from hf_missing.ablation import AblationRow, run_settings

    row = AblationRow("full", "rep", {})
    settings = {p: run_settings(DemoSettings(precision=p), row, "stage1", workspace) for p in ("fp32", "bf16")}
    assert settings["bf16"] == settings["fp32"] | {"precision": "bf16"}
    assert "precision" not in settings["fp32"]
