"""Feature-cache extraction time: the previous extraction against the length-grouped one.

Before (the code at ``--before``, default 83f195a): the frozen trunk ran over the training set in
dataset order, each batch padded to its longest text (so most batches to nearly the longest in the
set), the whole last layer computed for the first-token features, and hidden states stored padded to
``model.max_length``. Now (the working tree): batches of similar length (each padded to its longest),
the last layer computes the first token only (text/first_token.py), and hidden states are stored
without padding (feature_cache.Ragged). Both extract the same samples with the same model in this
process, alternating in rounds; the bench also checks that they store the same per-sample values.

Cases: ``feature_extraction`` (all six blocks frozen: the first token's hidden state is cached) and
``partial`` (embeddings and the first ``--frozen-blocks`` blocks frozen: their hidden states).

    python bench/feature_extraction.py                  # MiniLM-L6 on 1,024 Rotten Tomatoes reviews
    python bench/feature_extraction.py --quick          # the tiny test BERT: a smoke test

Times are process CPU time (steady on a shared machine with --threads 1) and wall time; only the
ratios within one run mean anything.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dropout_masks import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def load_at(rev: str, path: str, package: str, name: str) -> types.ModuleType:
    """A module's source at git ``rev``, imported under ``package`` (its relative imports resolve there)."""
    src = subprocess.check_output(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], text=True)
    spec = importlib.util.spec_from_loader(f"{package}.{name}", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = package
    sys.modules[spec.name] = module
    exec(compile(src, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def build(args, strategy: dict):
    from omnitune.core.api import as_recipe, build_task, seed_everything

    if args.quick:
        from omnitune.core.base.recipe import validate_recipe
        from omnitune.core.base.registry import FIXTURES

        raw = FIXTURES.get("text-classification").tiny_recipe(Path(tempfile.mkdtemp()))
        raw["finetune"] = strategy
        rec = validate_recipe(raw, where="tiny")
    else:
        rec = as_recipe("text/minilm-rotten-tomatoes", {"finetune": strategy})
    task = build_task(rec)
    seed_everything(0)
    model = task.build_model().eval()
    train = task.build_datasets().train
    subset = torch.utils.data.Subset(train, range(min(args.samples, len(train))))
    subset.lengths = lambda: [train.lengths()[i] for i in subset.indices]  # the dataset's lengths, as extract reads them
    return task, model, subset


def run(args) -> dict:
    from omnitune.core.loop import feature_cache as new_fc

    old_fc = load_at(args.before, "core/loop/feature_cache.py", "omnitune.core.loop", "_feature_cache_before")
    old_cls = load_at(args.before, "text/classification.py", "omnitune.text", "_classification_before")
    cases = {"feature_extraction": ({"strategy": "feature_extraction"}, None),
             "partial": ({"strategy": "partial", "freeze_layers": 1 + args.frozen_blocks}, 1 + args.frozen_blocks)}
    out = {}
    for case, (strategy, depth) in cases.items():
        task, model, data = build(args, strategy)
        depth = depth or len(task.layer_groups(model)) - 1
        old_task = types.SimpleNamespace(collate=task.collate, frozen_features=types.MethodType(
            old_cls.TextClassificationTask.frozen_features, task))
        cpu = torch.device("cpu")
        runs = {"before": lambda: old_fc.extract(old_task, model, data, depth, args.batch, cpu),
                "now": lambda: new_fc.extract(task, model, data, depth, args.batch, cpu)}
        times = {k: [] for k in runs}
        stores = {}
        for _ in range(args.rounds):
            for name, fn in runs.items():
                c0, t0 = time.process_time(), time.perf_counter()
                stores[name] = fn()
                times[name].append((time.process_time() - c0, time.perf_counter() - t0))
        idx = list(range(len(data)))
        a, b = stores["before"].gather(idx), stores["now"].gather(idx)
        if "first_token" in b:
            diff = float((a["first_token"] - b["first_token"]).abs().max())
        else:
            n = b["attention_mask"].sum(1)
            diff = max(float((a["hidden"][j, :k] - b["hidden"][j, :k]).abs().max()) for j, k in enumerate(n.tolist()))
        lengths = np.asarray(data.lengths())
        row = {"depth": depth, "samples": len(data), "mean_tokens": round(float(lengths.mean()), 1),
               "max_tokens": int(lengths.max()), "max_length": task.model_cfg.max_length, "max_abs_diff": diff,
               "cache_mb": {k: round(s.nbytes / 2**20, 2) for k, s in stores.items()}}
        for c, clock in enumerate(("cpu", "wall")):
            med = {k: statistics.median(t[c] for t in v) for k, v in times.items()}
            row[f"{clock}_s"] = {k: round(v, 2) for k, v in med.items()}
            row[f"{clock}_speedup"] = round(med["before"] / med["now"], 2)
        out[case] = row
        print(case, json.dumps(row), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="83f195a", help="git revision with the previous extraction")
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=128, help="extraction batch (the recipe's eval_batch_size)")
    ap.add_argument("--frozen-blocks", type=int, default=3, help="partial: blocks frozen above the embeddings")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="the tiny test BERT instead of MiniLM")
    args = ap.parse_args()
    if args.quick:
        args.frozen_blocks = 1
    torch.set_num_threads(args.threads)
    report = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__, "before": args.before,
              "quick": args.quick, "note": "shared machine: medians of alternating rounds; compare ratios only",
              "cases": run(args)}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"feature_extraction{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"cpu: {report['cpu']} | results: {path}")


if __name__ == "__main__":
    main()
