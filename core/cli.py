"""The ``omnitune`` command line. Heavy libraries are imported inside the commands."""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import entry_points


def _cmd_train(args) -> int:
    if args.resume and (args.recipe or args.overrides):  # refused, as the API refuses them: never dropped
        from .base.errors import OmnituneError

        given = " ".join(a for a in [args.recipe, *args.overrides] if a)
        raise OmnituneError(f"--resume continues a run with its own recipe; overrides are not allowed (got: {given})")
    if args.nproc > 1:
        from .loop.launch import launch_local

        child = (["--debug"] if args.debug else []) + ["train"]
        child += ["--resume", args.resume] if args.resume else [args.recipe, *args.overrides]
        return launch_local(args.nproc, child)
    from .api import process_state, train

    result = train(args.recipe, args.overrides, resume=args.resume) if not args.resume else train(
        None, resume=args.resume)
    if not process_state().is_main_process:  # one summary per run, from the main process
        return 0
    test = result.metrics.get("test") or result.metrics.get("validation")
    split = "test" if "test" in result.metrics else "validation"
    shown = {k: round(v, 4) for k, v in test.items() if isinstance(v, float)}
    main = result.metrics.get("selected_by")
    if main in test:
        print(f"{split} {main}: {test[main]:.4f}")
    if "baseline_test" in result.metrics and main in result.metrics["baseline_test"]:
        print(f"baseline (before training) test {main}: {result.metrics['baseline_test'][main]:.4f}")
    print(f"{split} metrics: {json.dumps(shown)}")
    print(f"run folder: {result.run_dir}  (report: {result.run_dir / 'report.md'})")
    return 0


def _cmd_eval(args) -> int:
    from .api import evaluate

    groups = [c.strip() for c in args.groups.split(",") if c.strip()] if args.groups else None
    out = evaluate(args.run_dir, data=args.data, batch_size=args.batch_size, adapter=args.adapter, groups=groups)
    print(json.dumps({"data": out["data"], "samples": out["samples"], "metrics": out["metrics"]}, indent=1))
    if groups:
        from pathlib import Path

        from .evaluation.groups import fairness_png, groups_md

        print(groups_md(out["groups"]))
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "groups.json").write_text(json.dumps(out["groups"], indent=1, default=str))
            fairness_png(out["groups"], Path(args.out) / "group_rates.png")
    return 0


def _cmd_predict(args) -> int:
    from .api import predict

    inputs = list(args.inputs)
    if args.file:
        with open(args.file) as f:
            inputs += [line.rstrip("\n") for line in f if line.strip()]
    if args.onnx:  # no RUN_DIR then: the first positional argument is an input
        from .api import predict_onnx

        inputs = ([args.run_dir] if args.run_dir else []) + inputs
        if not inputs:
            raise SystemExit("omnitune predict --onnx EXPORT_DIR: give INPUT arguments or --file")
        for row in predict_onnx(args.onnx, inputs, variant="int8" if args.int8 else "fp32", adapter=args.adapter):
            print(json.dumps(row))
        return 0
    if not args.run_dir:
        raise SystemExit("omnitune predict: give RUN_DIR (or --onnx EXPORT_DIR)")
    if not inputs:
        raise SystemExit("omnitune predict: give INPUT arguments or --file")
    for row in predict(args.run_dir, inputs, adapter=args.adapter):
        print(json.dumps(row))
    return 0


def _cmd_export(args) -> int:
    from .api import export

    if args.all_adapters:
        if args.quantize or args.adapter:
            raise SystemExit("omnitune export --all-adapters: exports every adapter in fp32 (no --quantize/--adapter)")
        result = export(args.run_dir, args.out, all_adapters=True, atol=args.atol)
    else:
        result = export(args.run_dir, args.out, format=args.format, quantize=args.quantize, adapter=args.adapter,
                        atol=args.atol, int8_min_agreement=args.int8_min_agreement, evaluate=not args.no_eval)
    for variant, p in result.manifest["parity"].items():
        print(f"parity {variant if args.all_adapters else 'onnx-' + variant}: max abs diff {p['max_abs_diff_all']:.3g}, {p['compared_what']} agree "
              f"{p['agreement']:.2%} on {p['samples']} validation samples")
    for row in result.report.get("rows", []):
        metric = result.report["main_metric"]
        print(f"{row['model']:<10} {result.report['split']} {metric} {row['metrics'][metric]:.4f}  "
              f"latency b1 {row['latency_ms_batch1']:.2f} ms  b32 {row['latency_ms_batch32']:.2f} ms  "
              f"{row['size_bytes'] / 1e6:.2f} MB")
    for r in result.report.get("synthesis", []):  # a waveform generator: speed instead of a metric
        print(f"{r['model']:<10} synthesis {r['seconds']:.3f} s for {r['audio_seconds']:.2f} s of audio "
              f"(real-time factor {r['real_time_factor']:.3f})  {r['size_bytes'] / 1e6:.2f} MB")
    print(f"export folder: {result.out_dir}" + ("  (report: export_report.md)" if result.report else ""))
    return 0


def _cmd_recipes(args) -> int:
    from .base.recipe import list_shipped_recipes

    rows = list_shipped_recipes()
    width = max((len(n) for n, _ in rows), default=0)
    for name, desc in rows:
        print(f"{name:<{width}}  {desc.splitlines()[0] if desc else ''}")
    return 0


def _cmd_metrics(args) -> int:
    from .base.metrics import METRICS, list_metrics

    names = list_metrics()
    width = max(map(len, names), default=0)
    for name in names:
        m = METRICS.get(name)
        print(f"{name:<{width}}  {m.direction or '-':<3}  {m.library:<12}  {m.description}")
    return 0


def _cmd_schema(args) -> int:
    from .base.registry import list_tasks

    if not args.task:
        print("\n".join(list_tasks()))
        return 0
    from .base.errors import RecipeError
    from .base.schema import format_schema, schema_rows

    if args.task not in list_tasks():
        raise RecipeError(f"schema: unknown task {args.task!r} (known: {', '.join(list_tasks())})")
    rows = schema_rows(args.task)
    print(json.dumps(rows, indent=1, default=str) if args.format == "json" else format_schema(args.task, rows))
    return 0


def _cmd_validate(args) -> int:
    from .base.recipe import load_recipe, resolve_recipe_path

    recipe = load_recipe(args.recipe, args.overrides)
    print(f"{resolve_recipe_path(args.recipe)}: valid recipe {recipe.name!r} (task {recipe.task})")
    return 0


def _cmd_assets(args) -> int:
    from .base import assets

    if args.action == "list":
        for a in assets.list_assets():
            pkgs = ", ".join(f"{p.registry}:{p.name}=={p.version}" for p in a.packages)
            state = "fetched" if assets.is_fetched(a) else "not fetched"
            print(f"{a.name:<18} {state:<12} {a.licence:<12.12} {pkgs}\n{'':<18} {a.description}")
        return 0
    if not args.name:
        raise SystemExit("omnitune assets fetch: name an asset (see `omnitune assets list`)")
    print(assets.fetch(args.name))
    return 0


def _cmd_tune(args) -> int:
    from .api import tune

    result = tune(args.recipe, args.overrides, n_trials=args.n_trials, timeout_s=args.timeout,
                  storage=args.storage, study_dir=args.study_dir)
    print(f"best validation {result.metric}: {result.best_value:.4f} with {json.dumps(result.best_params)}")
    print(f"study folder: {result.study_dir}  (report: {result.study_dir / 'tune_report.md'})")
    return 0


def _cmd_cv(args) -> int:
    from .api import cross_validate

    out = cross_validate(args.recipe, args.overrides, folds=args.folds, out_dir=args.out)
    for key, v in out["summary"].items():
        print(f"{key:<20} {v['mean']:.4f} ± {v['std']:.4f}")
    print(f"cv folder: {out['cv_dir']}  (report: {out['cv_dir'] / 'cv_report.md'})")
    return 0


def _cmd_curve(args) -> int:
    from .api import curve

    out = curve(args.recipe, args.overrides, sizes=args.sizes, repeats=args.repeats, compare=args.compare,
                out_dir=args.out)
    print((out["curve_dir"] / "curve.md").read_text())
    print(f"curve folder: {out['curve_dir']}")
    return 0


def _cmd_bench(args) -> int:
    from .studies.suite import run_suite

    out = run_suite(args.suite, out_dir=args.out, only=args.only, validate_only=args.validate_only)
    print(out)
    return 0


def _cmd_adapters(args) -> int:
    from pathlib import Path

    from .adapters import peft as peft_lib
    from .api import merge_adapter
    from .runs import MODEL_DIR, RECIPE_FILE

    if args.action == "list":
        for a in peft_lib.list_adapters(Path(args.folder) / MODEL_DIR) or peft_lib.list_adapters(Path(args.folder)):
            print(f"{a['name']:<16} {a['method']:<5} r={a['r']}  {a['bytes'] / 1e6:.2f} MB  "
                  f"targets={a['target_modules']}  head={a['modules_to_save']}")
        return 0
    if args.action == "add":
        if not args.source:
            raise SystemExit("omnitune adapters add LIBRARY RUN_DIR")
        name = peft_lib.add_to_library(Path(args.folder), Path(args.source), RECIPE_FILE, MODEL_DIR, args.name)
        print(f"added adapter {name!r} to {args.folder}")
        return 0
    # merge: base + one adapter folded into plain weights, saved in the task's full model layout
    if not args.out:
        raise SystemExit("omnitune adapters merge FOLDER --out DIR [--name ADAPTER]")
    print(f"merged adapter {args.name or 'default'} into {merge_adapter(args.folder, args.out, args.name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnitune", description="Fine-tune pretrained text, vision and speech models from YAML recipes.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train from a recipe (file or shipped name) with KEY=VALUE overrides")
    p.add_argument("recipe", nargs="?", help="recipe file or shipped name, e.g. text/minilm-rotten-tomatoes")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-5 data.max_samples=500")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train in N local processes (DDP through torchrun's API; train.batch_size is per process)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a finished run on its test split or other data")
    p.add_argument("run_dir")
    p.add_argument("--data", help="a file or folder to evaluate on instead of the run's test split")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--adapter", help="which adapter of a PEFT run or adapter library to evaluate")
    p.add_argument("--groups", metavar="COL[,COL]",
                   help="group columns of the table: every metric per group value (and fairlearn's view)")
    p.add_argument("--out", metavar="DIR", help="with --groups: write groups.json and group_rates.png here")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="predict with a finished run's model")
    p.add_argument("run_dir", nargs="?", help="the run folder (omit it with --onnx)")
    p.add_argument("inputs", nargs="*", help="texts (or image/audio paths for those tasks)")
    p.add_argument("--file", help="read one input per line from this file")
    p.add_argument("--adapter", help="which adapter of a PEFT run or adapter library to use")
    p.add_argument("--onnx", metavar="EXPORT_DIR", help="run an `omnitune export` folder with ONNX Runtime instead")
    p.add_argument("--int8", action="store_true", help="with --onnx: the int8 model (exported with --quantize int8)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="export a finished run's model to ONNX (parity-checked, optional int8)")
    p.add_argument("run_dir")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--quantize", choices=["int8"], help="also write an int8 model (ORT quantisation)")
    p.add_argument("--out", help="export folder (default: RUN_DIR/export-onnx)")
    p.add_argument("--adapter", help="which adapter of a PEFT run or adapter library to merge and export")
    p.add_argument("--atol", type=float, default=1e-3, help="parity: largest allowed |ONNX fp32 - PyTorch| (default 1e-3)")
    p.add_argument("--int8-min-agreement", type=float, default=0.9,
                   help="parity: least share of int8 predictions equal to PyTorch's (default 0.9)")
    p.add_argument("--no-eval", action="store_true", help="skip the test-split metrics and latency report")
    p.add_argument("--all-adapters", action="store_true",
                   help="an adapter library: the base graph once plus each adapter's weights, switched at load time")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("tune", help="hyper-parameter search over the recipe's tune.space (Optuna)")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--n-trials", type=int, help="trial budget of the whole study, all processes together (finished trials of a resumed study count)")
    p.add_argument("--timeout", type=float, help="time budget in seconds")
    p.add_argument("--storage", help="Optuna database URL shared by several processes (default: SQLite in the study folder)")
    p.add_argument("--study-dir", help="study folder (default: <output.dir>/<name>-tune); rerun to resume")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("cv", help="stratified K-fold cross-validation, each fold a full run")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--out", help="folder for folds, runs and the report")
    p.set_defaults(func=_cmd_cv)

    p = sub.add_parser("curve", help="test metric against training-set size: pretrained vs scratch (and strategies)")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--sizes", required=True, help="comma-separated training-set sizes, e.g. 100,300,1000,3000")
    p.add_argument("--repeats", type=int, default=1, help="seeds per size (nested subsets per seed)")
    p.add_argument("--compare", default="scratch",
                   help="variants beside pretrained: scratch, full, feature_extraction, lora, ia3, bottleneck")
    p.add_argument("--out", help="folder for data subsets, runs, table and plot")
    p.set_defaults(func=_cmd_curve)

    p = sub.add_parser("bench", help="run a benchmark suite (YAML list of recipes) and write a leaderboard")
    p.add_argument("suite", help="suite file, e.g. bench/offline.yaml")
    p.add_argument("--out", help="folder for the runs and the leaderboard")
    p.add_argument("--only", nargs="*", help="run only these entries (by name)")
    p.add_argument("--validate-only", action="store_true", help="check every entry's recipe, run nothing")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("adapters", help="PEFT adapters: list, add a run's adapter to a library, merge one into the base")
    p.add_argument("action", choices=["list", "add", "merge"])
    p.add_argument("folder", help="a PEFT run folder or an adapter library")
    p.add_argument("source", nargs="?", help="add: the PEFT run whose adapter to add")
    p.add_argument("--name", help="add: the adapter's name in the library; merge: which adapter")
    p.add_argument("--out", help="merge: folder for the merged model")
    p.set_defaults(func=_cmd_adapters)

    p = sub.add_parser("recipes", help="list the shipped recipes")
    p.set_defaults(func=_cmd_recipes)

    p = sub.add_parser("metrics", help="list the metric registry: name, direction (max/min), library")
    p.set_defaults(func=_cmd_metrics)

    p = sub.add_parser("schema", help="every recipe field of a task: dotted path, type, default, explanation")
    p.add_argument("task", nargs="?", help="a registered task, e.g. text-classification (none: list the tasks)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("validate", help="validate a recipe (and overrides) without running it")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("assets", help="list or fetch the offline models and data")
    p.add_argument("action", choices=["list", "fetch"])
    p.add_argument("name", nargs="?")
    p.set_defaults(func=_cmd_assets)

    # Domain packages add their own commands (e.g. `omnitune chat`, `omnitune speech import-ct2`) through this group.
    for ep in entry_points(group="omnitune.commands"):
        try:
            add_commands = ep.load()
        except ImportError as exc:  # a broken plug-in must not take the whole CLI down
            print(f"warning: commands {ep.name!r} ({ep.value}) unavailable: {exc}", file=sys.stderr)
            continue
        add_commands(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Dotted overrides may also follow options (`omnitune cv R --folds 5 train.lr=3e-5`); argparse
    leaves those over, since a positional list cannot resume after an option."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides = list(args.overrides or []) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    from .base.errors import OmnituneError

    parser = build_parser()
    args = parse_args(parser, argv)
    if args.command == "train" and not args.recipe and not args.resume:
        parser.error("train: give a RECIPE or --resume RUN_DIR")
    try:
        return args.func(args)
    except OmnituneError as exc:
        if args.debug:
            raise
        from .loop.trainer import Interrupted

        print(f"{'' if isinstance(exc, Interrupted) else 'error: '}{exc}", file=sys.stderr)
        return 130 if isinstance(exc, Interrupted) else 2


if __name__ == "__main__":
    sys.exit(main())
