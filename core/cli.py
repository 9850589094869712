"""The ``omnitune`` command line. Heavy libraries are imported inside the commands."""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import entry_points


def _cmd_train(args) -> int:
    from .api import train

    result = train(args.recipe, args.overrides, resume=args.resume) if not args.resume else train(
        None, resume=args.resume)
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

    out = evaluate(args.run_dir, data=args.data, batch_size=args.batch_size)
    print(json.dumps({"data": out["data"], "samples": out["samples"], "metrics": out["metrics"]}, indent=1))
    return 0


def _cmd_predict(args) -> int:
    from .api import predict

    inputs = list(args.inputs)
    if args.file:
        with open(args.file) as f:
            inputs += [line.rstrip("\n") for line in f if line.strip()]
    if not inputs:
        raise SystemExit("omnitune predict: give INPUT arguments or --file")
    for row in predict(args.run_dir, inputs):
        print(json.dumps(row))
    return 0


def _cmd_recipes(args) -> int:
    from .recipe import list_shipped_recipes

    rows = list_shipped_recipes()
    width = max((len(n) for n, _ in rows), default=0)
    for name, desc in rows:
        print(f"{name:<{width}}  {desc.splitlines()[0] if desc else ''}")
    return 0


def _cmd_validate(args) -> int:
    from .recipe import load_recipe, resolve_recipe_path

    recipe = load_recipe(args.recipe, args.overrides)
    print(f"{resolve_recipe_path(args.recipe)}: valid recipe {recipe.name!r} (task {recipe.task})")
    return 0


def _cmd_assets(args) -> int:
    from . import assets

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnitune", description="Fine-tune pretrained text, vision and speech models from YAML recipes.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train from a recipe (file or shipped name) with KEY=VALUE overrides")
    p.add_argument("recipe", nargs="?", help="recipe file or shipped name, e.g. text/minilm-rotten-tomatoes")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-5 data.max_samples=500")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a finished run on its test split or other data")
    p.add_argument("run_dir")
    p.add_argument("--data", help="a file or folder to evaluate on instead of the run's test split")
    p.add_argument("--batch-size", type=int)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="predict with a finished run's model")
    p.add_argument("run_dir")
    p.add_argument("inputs", nargs="*", help="texts (or image/audio paths for those tasks)")
    p.add_argument("--file", help="read one input per line from this file")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("recipes", help="list the shipped recipes")
    p.set_defaults(func=_cmd_recipes)

    p = sub.add_parser("validate", help="validate a recipe (and overrides) without running it")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("assets", help="list or fetch the offline models and data")
    p.add_argument("action", choices=["list", "fetch"])
    p.add_argument("name", nargs="?")
    p.set_defaults(func=_cmd_assets)

    # Domain packages add their own commands (e.g. `omnitune speech import-ct2`) through this group.
    for ep in entry_points(group="omnitune.commands"):
        try:
            add_commands = ep.load()
        except ImportError as exc:  # a broken plug-in must not take the whole CLI down
            print(f"warning: commands {ep.name!r} ({ep.value}) unavailable: {exc}", file=sys.stderr)
            continue
        add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import OmnituneError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and not args.recipe and not args.resume:
        parser.error("train: give a RECIPE or --resume RUN_DIR")
    try:
        return args.func(args)
    except OmnituneError as exc:
        if args.debug:
            raise
        from .trainer import Interrupted

        print(f"{'' if isinstance(exc, Interrupted) else 'error: '}{exc}", file=sys.stderr)
        return 130 if isinstance(exc, Interrupted) else 2


if __name__ == "__main__":
    sys.exit(main())
