"""A verdict on a run, read from its own learning curves (the trainer's history).

The rules are the ones the seeds teach for reading learning curves:

- **diverged**: the training loss ended far above its best (it blew up) or became non-finite;
- **overfitting from step N**: the validation loss bottomed out at step N and then rose clearly
  while the training loss kept falling;
- **underfitting**: the training loss barely fell from its start (both losses stay high);
- **still improving**: the validation loss (or metric) was still getting better at the last
  evaluations: more steps would likely help;
- **converged**: none of the above: the curves flattened out.

Each verdict names the recipe fields worth changing. Thresholds are relative (the loss scale
differs by task), and stated next to each rule.

>>> h = [{"step": s, "train_loss": 1.0 / s} for s in range(1, 11)]
>>> h += [{"step": s, "val_loss": v} for s, v in [(2, 0.9), (4, 0.6), (6, 0.7), (8, 0.8), (10, 0.9)]]
>>> diagnose(h)["verdict"], diagnose(h)["step"]
('overfitting', 4)
"""

from __future__ import annotations

import math
from typing import Any

# The validation loss must rise this share above its minimum to call it overfitting (noise margin).
OVERFIT_RISE = 0.05
# Underfitting: the training loss fell by less than this share of its start.
UNDERFIT_DROP = 0.10
# Divergence: the last training loss is this many times its best (and above its start).
DIVERGE_FACTOR = 2.0
# Still improving: the last evaluation improved on the one before by more than this share.
IMPROVING_SHARE = 0.01

ADVICE = {
    "diverged": ["train.lr (lower it, e.g. / 3)", "sched.warmup_ratio (raise it)", "train.max_grad_norm (set 1.0)",
                 "train.precision (fp32 if bf16/fp16)"],
    "overfitting": ["early_stopping.enabled (true; the best checkpoint is already kept)",
                    "train.epochs / train.max_steps (fewer)", "regularization.dropout / optim.weight_decay (raise)",
                    "finetune.strategy or finetune.peft (train fewer parameters)", "data.max_samples (more data)"],
    "underfitting": ["train.lr (raise it)", "train.epochs (more)", "finetune.strategy (full instead of "
                     "feature_extraction / partial)", "finetune.peft.r (larger)", "model.name (a larger model)"],
    "still improving": ["train.epochs / train.max_steps (more)", "sched.name (a schedule that decays later)"],
    "converged": [],
    "too short to tell": ["train.eval_every / train.log_every (evaluate and log more often)"],
}


def _series(history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(int(h["step"]), float(h[key])) for h in history if key in h and h[key] is not None]


def diagnose(history: list[dict[str, Any]], metric: str | None = None, mode: str = "max", *,
             strategy: str | None = None, peft: bool | None = None) -> dict[str, Any]:
    """The run's verdict: ``{"verdict", "step", "evidence", "advice"}`` from ``history`` (entries
    with ``train_loss`` and/or ``val_loss``/``val_<metric>`` by ``step``, as TrainerState keeps).
    ``strategy`` / ``peft`` (the recipe's finetune settings, when known) drop advice that does not
    apply: no "train more of the model" for a full fine-tune, no adapter rank without an adapter."""
    found = _diagnose(history, metric, mode)
    if strategy == "full" and not peft:
        found["advice"] = [a for a in found["advice"] if not a.startswith("finetune.strategy (full")]
    if peft is False:
        found["advice"] = [a for a in found["advice"] if not a.startswith("finetune.peft.")]
    return found


def _diagnose(history: list[dict[str, Any]], metric: str | None, mode: str) -> dict[str, Any]:
    train = _series(history, "train_loss")
    val = _series(history, "val_loss")
    if any(not math.isfinite(v) for _, v in train + val):
        return _verdict("diverged", None, "a loss became non-finite")
    if len(train) >= 2:
        first, last, best = train[0][1], train[-1][1], min(v for _, v in train)
        if last > DIVERGE_FACTOR * max(best, 1e-12) and last > first:
            return _verdict("diverged", train[-1][0],
                            f"training loss rose from its best {best:.4g} to {last:.4g} at the end")
    if len(val) >= 3:
        i_min = min(range(len(val)), key=lambda i: val[i][1])
        step_min, v_min = val[i_min]
        v_last = val[-1][1]
        later_train = [v for s, v in train if s > step_min]
        at_min = [v for s, v in train if s <= step_min]
        if (i_min < len(val) - 1 and v_last > v_min + OVERFIT_RISE * abs(v_min)
                and later_train and at_min and later_train[-1] < at_min[-1]):
            return _verdict("overfitting", step_min,
                            f"validation loss bottomed at {v_min:.4g} (step {step_min}) and rose to {v_last:.4g} "
                            f"while the training loss fell from {at_min[-1]:.4g} to {later_train[-1]:.4g}")
    if len(train) >= 2:
        first, last = train[0][1], train[-1][1]
        if first > 0 and (first - last) / first < UNDERFIT_DROP:
            val_note = f"; validation loss {val[-1][1]:.4g}" if val else ""
            return _verdict("underfitting", None, f"training loss barely fell: {first:.4g} -> {last:.4g} "
                            f"(less than {UNDERFIT_DROP:.0%}){val_note}")
    if len(val) >= 2:
        (_, v_prev), (s_last, v_last) = val[-2], val[-1]
        gain = (v_prev - v_last) / max(abs(v_prev), 1e-12)
        metric_gain = _metric_gain(history, metric, mode)
        if gain > IMPROVING_SHARE or (metric_gain is not None and metric_gain > IMPROVING_SHARE):
            what = (f"validation loss {v_prev:.4g} -> {v_last:.4g}" if gain > IMPROVING_SHARE
                    else f"validation {metric} still improving by {metric_gain:.1%}")
            return _verdict("still improving", s_last, f"the last evaluation was still better: {what}")
        return _verdict("converged", None, f"validation loss flat at the end ({v_prev:.4g} -> {v_last:.4g})")
    if len(train) < 2:
        return _verdict("too short to tell", None, "fewer than two logged training losses")
    return _verdict("converged", None, "training loss fell; too few evaluations to judge validation")


def _metric_gain(history: list[dict[str, Any]], metric: str | None, mode: str) -> float | None:
    if not metric:
        return None
    series = _series(history, f"val_{metric}")
    if len(series) < 2:
        return None
    prev, last = series[-2][1], series[-1][1]
    gain = (last - prev) if mode == "max" else (prev - last)
    return gain / max(abs(prev), 1e-12)


def _verdict(verdict: str, step: int | None, evidence: str) -> dict[str, Any]:
    return {"verdict": verdict, "step": step, "evidence": evidence, "advice": list(ADVICE[verdict])}


def diagnosis_md(d: dict[str, Any]) -> str:
    head = d["verdict"] + (f" from step {d['step']}" if d["verdict"] == "overfitting" and d["step"] else "")
    lines = [f"**Verdict: {head}.** {d['evidence'][0].upper() + d['evidence'][1:]}."]
    if d["advice"]:
        lines += ["", "Recipe fields worth changing: " + "; ".join(f"`{a.split(' ')[0]}` {' '.join(a.split(' ')[1:])}"
                                                                 for a in d["advice"]) + "."]
    return "\n".join(lines)
