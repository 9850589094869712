"""PyTorch vs ONNX Runtime fp32 vs int8 on a real fine-tuned model: test accuracy, batch-1 and
batch-32 latency, file size (the export report of ``omnitune export --quantize int8``).

A short run of the shipped ``text/minilm-rotten-tomatoes`` recipe (``--steps`` optimiser steps on
the bundled MiniLM-L6 and Rotten Tomatoes assets), then its export. Every figure comes from the
one process, so the ratios hold even on a machine shared with other jobs.

    python bench/export_latency.py --steps 60 --max-eval-samples 500   # a few minutes on 2 idle CPU cores
    python bench/export_latency.py --run runs/RUN_DIR     # export an existing run instead
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    import omnitune
    from omnitune.core import api

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="text/minilm-rotten-tomatoes")
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps of the short training run")
    parser.add_argument("--run", help="export this finished run instead of training one")
    parser.add_argument("--max-eval-samples", type=int, help="cap the validation and test splits (data.max_eval_samples)")
    parser.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads (same for both)")
    parser.add_argument("--out", default="runs", help="folder for the run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.run:
        run_dir, train_s = Path(args.run), 0.0
    else:
        overrides = {"train.max_steps": args.steps, "output.dir": args.out, "train.threads": args.threads,
                     "output.run_name": f"export-bench-{datetime.now():%Y%m%d-%H%M%S}"}
        if args.max_eval_samples:
            overrides["data.max_eval_samples"] = args.max_eval_samples
        run_dir = omnitune.train(args.recipe, overrides).run_dir
        train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = api.export(run_dir, quantize="int8")
    export_s = time.perf_counter() - t1
    summary = {"run": str(run_dir), "steps": args.steps if not args.run else None, "train_seconds": round(train_s, 1),
               "export_and_report_seconds": round(export_s, 1), "threads": args.threads,
               "cpu": platform.processor() or platform.machine(), "report": str(result.out_dir / "export_report.md"),
               "rows": result.report["rows"], "parity": result.manifest["parity"]}
    print((result.out_dir / "export_report.md").read_text())
    print(json.dumps({k: v for k, v in summary.items() if k not in ("rows", "parity")}, indent=1))
    return summary


if __name__ == "__main__":
    main()
