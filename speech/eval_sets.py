"""ASR's extra evaluation sets (``data.eval_sets``: codec twins, noisy mixes), scored with the
fine-tuned model and with the starting checkpoint; the task's ``extra_evaluations`` returns this."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn


def score(task: Any, model: nn.Module, batch_size: int = 8) -> dict[str, dict[str, float]]:
    """WER/CER of ``model`` on every ``data.eval_sets`` set of ``task``."""
    from omnitune.core.loop.evaluate import evaluate_model

    device = next(model.parameters()).device
    out = {}
    for name in task.data_cfg.eval_sets:
        dataset, _ = task.eval_set(name)
        metrics, _, _ = evaluate_model(task, model, dataset, batch_size, device)
        out[name] = {"samples": len(dataset), **{k: float(v) for k, v in metrics.items()}}
    return out


def before_and_after(task: Any, model: nn.Module, out_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """Score the sets with the fine-tuned ``model`` and with the starting checkpoint (built fresh by
    ``task.build_model()``), write ``eval_sets.json`` into ``out_dir``, and return the results and the
    report's table. ({}, []) without eval sets."""
    if not task.data_cfg.eval_sets:
        return {}, []
    after = score(task, model)
    base = task.build_model()  # the pretrained checkpoint (what the run started from)
    base.to(next(model.parameters()).device)
    before = score(task, base)
    result = {n: {"samples": after[n]["samples"], "before": before[n], "after": after[n],
                  "wer_change": after[n]["wer"] - before[n]["wer"]} for n in after}
    (Path(out_dir) / "eval_sets.json").write_text(json.dumps(result, indent=1))
    rows = "\n".join(f"| {n} | {r['samples']} | {r['before']['wer']:.2f} | {r['after']['wer']:.2f} | "
                     f"{r['wer_change']:+.2f} |" for n, r in result.items())
    block = ("### Extra evaluation sets (data.eval_sets)\n\nWER % of the starting checkpoint (before) and "
             "of the fine-tuned model (after) on each set (`eval_sets.json`).\n\n"
             "| set | clips | WER before | WER after | change |\n|---|---|---|---|---|\n" + rows + "\n")
    return result, [block]
