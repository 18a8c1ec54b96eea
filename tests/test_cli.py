import json

from hf_missing import cli


def test_train_runs_end_to_end_and_reports_per_pattern(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--backbone", "vilt", "--method", "baseline", "--epochs", "2", "--n-train", "64",
                     "--n-test", "32", "--output-dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["missing"]["rate"] == 0.7
    assert {"eval_accuracy", "eval_missing_text/accuracy"} <= set(report["eval"])
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_methods_lists_registered_methods(capsys):
    assert cli.main(["methods"]) == 0
    printed = capsys.readouterr().out
    assert "map:" in printed and "prompt_length" in printed and "baseline:" in printed
