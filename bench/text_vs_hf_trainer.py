"""omnitune versus transformers' Trainer: same model, data, batch size, epochs, precision, threads.

Both fine-tune the bundled all-MiniLM-L6-v2 on the same Rotten Tomatoes train split (built once by
omnitune's text task, so the samples are identical) and are scored by the same evaluation code on
the same test split, from their final weights. The Trainer is set up as its documentation
recommends for text classification: DataCollatorWithPadding (dynamic padding), bf16 on.

Reported: training samples/s of each and their ratio, test accuracy of each, and omnitune's useful
training FLOP/s (real tokens only, no padding) as a share of this machine's bf16 matmul peak,
measured in the same run.

    .venv/bin/python bench/text_vs_hf_trainer.py            # full train split, 1 epoch
    .venv/bin/python bench/text_vs_hf_trainer.py --train-samples 2000 --epochs 1   # quicker
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

RECIPE = "text/minilm-rotten-tomatoes"


def bf16_matmul_peak(threads: int, n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a large bf16 matmul: the ceiling a training step could reach on this CPU."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - t) / 1e9


def train_flops_per_token(config) -> float:
    """6 x (non-embedding parameters) per token for forward + backward (Kaplan et al. 2020);
    attention's sequence-length term is added per batch in `attention_flops`."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    per_layer = 4 * h * h + 2 * h * inter  # q, k, v, o projections and the two FFN matrices
    return 6.0 * layers * per_layer


def attention_flops(config, lengths: list[int]) -> float:
    # QK^T and AV: 2 matmuls x 2 FLOPs x s^2 x h per layer forward; x3 for forward + backward.
    return sum(3 * 2 * 2 * config.num_hidden_layers * s * s * config.hidden_size for s in lengths)


@torch.no_grad()
def accuracy(model, tokenizer, texts: list[str], labels: list[int], batch_size: int = 128) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], truncation=True, max_length=96, padding=True, return_tensors="pt")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(**enc).logits
        correct += int((logits.argmax(-1) == torch.tensor(labels[i:i + batch_size])).sum())
    return correct / len(texts)


def run_omnitune(overrides: dict, out_dir: Path):
    from safetensors.torch import load_model

    from omnitune.core.api import train

    result = train(RECIPE, {**overrides, "output.dir": str(out_dir), "output.run_name": "omnitune"})
    return result


def run_hf_trainer(model_path: str, texts, labels, args_ns, out_dir: Path):
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    ds = Dataset.from_dict({"text": texts, "label": labels})
    ds = ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=96), batched=True, remove_columns=["text"])
    torch.manual_seed(args_ns.seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    targs = TrainingArguments(
        output_dir=str(out_dir / "hf"), per_device_train_batch_size=args_ns.batch_size,
        num_train_epochs=args_ns.epochs, learning_rate=args_ns.lr, weight_decay=0.01, warmup_steps=0.06,
        lr_scheduler_type="linear", bf16=True, use_cpu=True, eval_strategy="no", save_strategy="no",
        logging_steps=50, report_to=[], seed=args_ns.seed, max_grad_norm=1.0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=ds, data_collator=DataCollatorWithPadding(tokenizer),
                      processing_class=tokenizer)
    t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t
    return model, tokenizer, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-samples", type=int, default=None, help="subset of the train split (default: all)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=None, help="folder for results.json (default: bench/results)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from omnitune.core.api import as_recipe, build_task

    overrides = {"train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.lr": args.lr,
                 "train.threads": args.threads, "train.precision": "bf16", "seed": args.seed,
                 "early_stopping.enabled": False, "train.save_checkpoints": True}
    if args.train_samples:
        overrides["data.max_samples"] = args.train_samples
    recipe = as_recipe(RECIPE, overrides)
    task = build_task(recipe)
    bundle = task.build_datasets()
    train_texts, train_labels = bundle.train.texts, list(bundle.train.labels)
    test_texts, test_labels = bundle.test.texts, list(bundle.test.labels)
    model_path = task.model_path
    tmp = Path(tempfile.mkdtemp(prefix="omnitune-bench-"))
    try:
        peak = bf16_matmul_peak(args.threads)
        print(f"bf16 matmul peak: {peak:.0f} GFLOP/s ({args.threads} threads)", flush=True)

        hf_model, tokenizer, hf_seconds = run_hf_trainer(model_path, train_texts, train_labels, args, tmp)
        hf_acc = accuracy(hf_model, tokenizer, test_texts, test_labels)
        del hf_model
        print(f"HF Trainer: {hf_seconds:.1f}s, test accuracy {hf_acc:.4f}", flush=True)

        result = run_omnitune(overrides, tmp)
        from safetensors.torch import load_model
        from transformers import AutoModelForSequenceClassification

        final = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
        load_model(final, str(result.run_dir / "checkpoints" / "last" / "model.safetensors"))
        om_acc = accuracy(final, tokenizer, test_texts, test_labels)
        om_seconds = result.metrics["timing"]["train_seconds"]
        n = len(train_texts) * args.epochs
        lengths = bundle.train.lengths() * args.epochs
        flops = train_flops_per_token(final.config) * sum(lengths) + attention_flops(final.config, lengths)
        achieved = flops / om_seconds / 1e9
        out = {
            "train_samples": len(train_texts), "test_samples": len(test_texts), "epochs": args.epochs,
            "batch_size": args.batch_size, "threads": args.threads, "precision": "bf16",
            "hf_trainer": {"train_seconds": round(hf_seconds, 2), "samples_per_s": round(n / hf_seconds, 2),
                           "test_accuracy": round(hf_acc, 4)},
            "omnitune": {"train_seconds": round(om_seconds, 2), "samples_per_s": round(n / om_seconds, 2),
                         "test_accuracy": round(om_acc, 4)},
            "speedup": round(hf_seconds / om_seconds, 3),
            "accuracy_gap_points": round(100 * (om_acc - hf_acc), 2),
            "omnitune_useful_gflops": round(achieved, 1), "bf16_matmul_peak_gflops": round(peak, 1),
            "share_of_peak": round(achieved / peak, 3),
        }
        print(json.dumps(out, indent=1))
        out_dir = Path(args.out or Path(__file__).parent / "results")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "text_vs_hf_trainer.json").write_text(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
