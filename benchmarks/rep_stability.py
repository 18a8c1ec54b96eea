"""REP stability: full REP (feature buffers) and the released chain over five seeds on the embedded default, with
the gates and the final training loss of every run, and how many seeds collapsed (one class for every test sample
under every pattern). ``python benchmarks/rep_stability.py [--seeds 0 1 2 3 4] [--output-dir DIR]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hf_missing.ablation import FULL, REP_ROWS, run_ablation
from hf_missing.demo import DemoSettings

ROWS = [r for r in REP_ROWS if r.name in (FULL, "released chain (buffer_source='parameters')")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=float, default=None, help="Override the demo preset's epochs.")
    parser.add_argument("--output-dir", default="benchmarks/results/rep-stability")
    args = parser.parse_args()
    settings = DemoSettings(output_dir=args.output_dir, seeds=args.seeds, epochs=args.epochs, progress=False)
    run_ablation(settings, "rep", ROWS)
    runs = json.loads(Path(args.output_dir, "runs.json").read_text(encoding="utf-8"))
    for key, run in runs.items():
        gates = ", ".join(f"{k.split('/')[-1]}={v:.2f}" for k, v in run["gates"].items())
        print(f"{key}: both70={run['accuracy']['both']:.3f} loss={run['train_loss']:.3f} "
              f"collapsed={run['collapsed']} {gates}")
    print(Path(args.output_dir, "ablation.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
