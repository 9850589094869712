"""ONNX export of a finished run: ``omnitune export RUN_DIR --format onnx [--quantize int8]``.

What to export is the task's own declaration: a task that implements ``export_spec()``
(:class:`~omnitune.core.base.task.Exportable`) returns an :class:`ExportSpec`
(core/base/exporting.py) naming its graphs and the runtime that traces and runs them
(core/deploy/runtimes.py); any other task gets a one-line error naming the tasks that export.

The run's best model (an adapter run merged into its base first) is traced with
``torch.onnx.export(..., dynamo=False)``: the TorchScript exporter takes the spec's dynamic axes
directly and needs no package beyond the ``onnx`` extra (the torch.export-based exporter, torch's
default since 2.9, needs onnxscript, which the extra does not pin). Optimum's exporter
(optimum-onnx 0.1.0, the only release) requires transformers < 4.58 and would downgrade ours, so
it is not used.

After every export a parity check runs ONNX Runtime against PyTorch on the run's own validation
samples (the datasets rebuilt from the recipe, as ``omnitune eval`` does); a difference above the
tolerance fails the export (core/deploy/parity.py). ``quantize="int8"`` adds ORT quantisation. The
export report (core/deploy/export_report.py) compares the PyTorch, ONNX fp32 and ONNX int8 models on
the run's test split through the task's own metrics, with batch-1 and batch-32 latency and file
sizes. The folder is self-contained: graphs, tokenizer/processor, labels, the recipe and a manifest
(``omnitune_export.json``) with the opset, inputs, outputs and dynamic axes.

A ``waveform`` generator (speech synthesis) is traced through the module its task builds; its parity
check compares each held-out sentence's waveform with the model's own forward at noise scales 0,
and its report is synthesis time and real-time factor instead of task metrics.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..base.errors import OmnituneError
from ..base.exporting import (BATCH_PHONEMES, BATCH_SEQ, TEXT_INPUTS, ExportSpec, Graph,  # noqa: F401 (re-exported)
                              encoder_decoder_graphs, kv_names, text_graph)
from .export_report import (latency_batch, latency_ms, model_bytes, quantize_int8, synthesis_report,  # noqa: F401
                            write_export_report, write_synthesis_report)
from .onnx_predict import MANIFEST, RECIPE, session
from .parity import first_batches, parity, parity_problems, waveform_parity  # noqa: F401 (re-exported)
from .runtimes import (decoding_settings, export_graph, modules_and_examples, utterances,  # noqa: F401
                       waveform_feeds)

OPSET = 17  # ORT 1.32 runs it fully; the TorchScript exporter's best-tested opset
FORMATS = ("onnx",)
QUANTIZATIONS = ("int8",)
# fp32 graphs must reproduce PyTorch to this absolute difference on every output value, and
# agree on at least this share of predicted labels/tokens; an int8 graph only on the share.
DEFAULT_ATOL = 1e-3
DEFAULT_MIN_AGREEMENT = 0.99
DEFAULT_INT8_MIN_AGREEMENT = 0.90


def _declares_export(task_cls: Any) -> bool:
    from ..base.task import Exportable

    # isinstance on the class object: a class attribute export_spec (not None) is what Exportable asks.
    return isinstance(task_cls, Exportable)


def exporting_tasks() -> list[str]:
    """The registered tasks that declare an export (a task whose module fails to import is left out)."""
    from ..base.registry import TASKS

    names = []
    for name in TASKS.names():
        try:
            if _declares_export(TASKS.get(name)):
                names.append(name)
        except Exception:  # a broken plug-in must not hide the others from the error below
            continue
    return names


def exportable_task(task_name: str) -> Any:
    """The registered task class ``task_name`` when it declares an export (``export_spec``); else a
    one-line OmnituneError naming it and the tasks that export. Needs no model, nor a valid recipe."""
    from ..base.registry import TASKS

    try:
        task_cls = TASKS.get(task_name)
    except OmnituneError:
        task_cls = None
    if task_cls is None or not _declares_export(task_cls):
        raise _no_export(task_name)
    return task_cls


def _no_export(task_name: str) -> OmnituneError:
    return OmnituneError(f"omnitune export: task {task_name!r} has no ONNX export "
                         f"(tasks that export: {', '.join(exporting_tasks()) or 'none'})")


def export_spec(task) -> ExportSpec:
    """The task's own :class:`ExportSpec` (checked to be one); a one-line error for a task without."""
    if not _declares_export(task):
        raise _no_export(task.name)
    spec = task.export_spec()
    if not isinstance(spec, ExportSpec):
        raise OmnituneError(f"task {task.name!r}: export_spec() returned {type(spec).__name__}, not an ExportSpec "
                            "(omnitune.core.base.exporting)")
    return spec


# ----------------------------------------------------------------------------- the export
@dataclass
class ExportResult:
    out_dir: Path
    manifest: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)


def copy_support_files(model_dir: Path, out_dir: Path) -> list[str]:
    """Tokenizer/processor, labels and configs from the run's model folder: everything but weights."""
    copied = []
    for p in sorted(model_dir.iterdir()):
        if p.is_file() and p.suffix not in (".safetensors", ".bin", ".pt", ".pth") and not p.name.startswith("adapter_"):
            shutil.copy2(p, out_dir / p.name)
            copied.append(p.name)
    return copied


def export_run(run_dir: str | Path, out_dir: str | Path | None = None, *, fmt: str = "onnx",
               quantize: str | None = None, adapter: str | None = None, opset: int = OPSET,
               atol: float = DEFAULT_ATOL, min_agreement: float = DEFAULT_MIN_AGREEMENT,
               int8_min_agreement: float = DEFAULT_INT8_MIN_AGREEMENT, parity_samples: int = 32,
               calibration_samples: int = 64, evaluate: bool = True, latency_repeats: int = 10) -> ExportResult:
    """Export a finished run's model to ONNX, check parity, optionally quantise, and write the
    export report. Returns the folder and its manifest; raises OmnituneError on a parity failure."""
    from ..adapters import peft as peft_lib
    from ..base.recipe import read_yaml
    from ..evaluation.report import write_json
    from ..loop.trainer import default_eval_batch_size, evaluate_model
    from ..runs import MODEL_DIR, RECIPE_FILE, load_run, user_extra_metrics

    if fmt not in FORMATS:
        raise OmnituneError(f"omnitune export: --format {fmt!r} is not supported (formats: {', '.join(FORMATS)})")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise OmnituneError(f"omnitune export: --quantize {quantize!r} is not supported (choose: {', '.join(QUANTIZATIONS)})")
    run_dir = Path(run_dir)
    if not (run_dir / RECIPE_FILE).is_file():
        raise OmnituneError(f"{run_dir}: not a run folder (no {RECIPE_FILE})")
    exportable_task(read_yaml(run_dir / RECIPE_FILE).get("task", ""))  # fails before any model loads
    rec, task, model = load_run(run_dir, adapter)
    spec = export_spec(task)
    if quantize == "int8" and spec.int8 == "none":
        raise OmnituneError(f"omnitune export: --quantize int8 is not offered for this task: {spec.int8_why}")
    merged = peft_lib.is_adapter_wrapper(model)
    if merged:  # adapters folded into the base weights: one plain graph, no peft at run time
        model = peft_lib.merge_adapter(model, adapter)
    model = peft_lib.task_model(model).eval()
    out = Path(out_dir) if out_dir else run_dir / f"export-{fmt}"
    out.mkdir(parents=True, exist_ok=True)

    bundle = task.build_datasets()  # seeded as in training: the run's own validation and test samples
    decoding = decoding_settings(spec, task, model)
    example = task.collate([bundle.validation[i] for i in range(min(2, len(bundle.validation)))])
    parts = modules_and_examples(spec, model, example, decoding, task)
    graphs, files = {}, {"fp32": {}}
    t0 = time.perf_counter()
    for graph, module, names, args in parts:
        name = f"{graph.role}.onnx"
        graphs[graph.role] = export_graph(graph, module, names, args, out / name, opset)
        files["fp32"][graph.role] = name
    export_seconds = time.perf_counter() - t0
    copied = copy_support_files(run_dir / MODEL_DIR, out)
    shutil.copy2(run_dir / RECIPE_FILE, out / RECIPE)
    hf_config = getattr(model, "config", None)
    if merged and hf_config is not None and hasattr(hf_config, "save_pretrained"):
        hf_config.save_pretrained(out)  # the merged model's own config beside its graphs
    if getattr(model, "generation_config", None) is not None and not (out / "generation_config.json").exists():
        model.generation_config.save_pretrained(out)
    int8_method = None
    if quantize == "int8":
        files["int8"] = {}
        calibration = None
        if spec.int8 == "static":
            (graph, _, names, _), = parts
            calibration = [{n: b[n].numpy() for n in names}
                           for b in first_batches(task, bundle.validation, calibration_samples, 8)]
        for role, name in files["fp32"].items():
            files["int8"][role] = f"{role}.int8.onnx"
            int8_method = quantize_int8(out / name, out / files["int8"][role], calibration)

    import onnxruntime

    manifest: dict[str, Any] = {
        "format": "onnx", "task": rec.task, "runtime": spec.runtime, "note": spec.note, "opset": opset,
        "exporter": "torch.onnx.export (TorchScript, dynamo=False)", "source_run": str(run_dir.resolve()),
        "recipe": rec.name, "base_model": rec.model.name, "adapter_merged": merged, "adapter": adapter,
        "graphs": graphs, "files": files, "decoding": decoding, "support_files": copied,
        "quantization": {"int8": f"onnxruntime.quantization, {int8_method}"} if quantize else None,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "onnx": __import__("onnx").__version__},
        "export_seconds": round(export_seconds, 2),
        "tolerance": {"atol": atol, "min_agreement": min_agreement, "int8_min_agreement": int8_min_agreement},
    }
    if spec.runtime == "waveform":  # what `predict --onnx` feeds as scales, and the WAV sample rate
        (_, generator, _, _), = parts
        manifest["synthesis"] = {"scales": list(generator.scales), "sampling_rate": generator.sampling_rate,
                                 "scales_order": ["noise_scale", "length_scale", "noise_scale_duration"],
                                 "traced_phonemes": int(parts[0][3][0].shape[1])}

    # --- parity on the run's validation samples: always, for every variant written
    batches = first_batches(task, bundle.validation, parity_samples, 8)
    manifest["parity"] = {}
    failures = []
    for variant, names in files.items():
        sessions = {role: session(out / n) for role, n in names.items()}
        result = parity(spec, parts, sessions, batches, decoding)
        bad = parity_problems(result, variant, atol, min_agreement, int8_min_agreement)
        result["passed"] = not bad
        manifest["parity"][variant] = result
        if bad:
            failures.append(f"ONNX {variant}: " + " and ".join(bad))
    write_json(out / MANIFEST, manifest)
    if failures:
        raise OmnituneError(f"omnitune export: parity check failed against PyTorch on "
                            f"{manifest['parity']['fp32']['samples']} validation samples of {run_dir}: "
                            f"{'; '.join(failures)} (graphs kept in {out} for inspection)")

    result = ExportResult(out, manifest)
    if evaluate and spec.runtime == "waveform":  # no task metrics from a generator graph: synthesis speed
        (_, generator, _, _), = parts
        sizes = {"pytorch": model_bytes(generator)}
        sizes.update({f"onnx-{v}": sum((out / n).stat().st_size for n in names.values()) for v, names in files.items()})
        result.report = synthesis_report(generator, {v: session(out / names["model"]) for v, names in files.items()},
                                         sizes, utterances(batches), max(3, latency_repeats // 3))
        write_synthesis_report(out, result.report, manifest)
    elif evaluate:
        dataset = bundle.test if bundle.test is not None else bundle.validation
        split = "test" if bundle.test is not None else "validation"
        batch_size = default_eval_batch_size(rec.train.batch_size, rec.train.eval_batch_size)
        extra = user_extra_metrics(rec)
        from .onnx_predict import load_ort_model

        candidates: list[tuple[str, Any, int]] = [("pytorch", model, model_bytes(model))]
        for variant, names in files.items():
            size = sum((out / n).stat().st_size for n in names.values())
            candidates.append((f"onnx-{variant}", load_ort_model(out, manifest, variant), size))
        rows = []
        for label, m, size in candidates:
            with torch.no_grad():
                metrics, _, _ = evaluate_model(task, m, dataset, batch_size, torch.device("cpu"), extra_metrics=extra)
            rows.append({"model": label, "metrics": metrics, "size_bytes": size})
        models = [m for _, m, _ in candidates]
        for key, size, reps in (("latency_ms_batch1", 1, latency_repeats), ("latency_ms_batch32", 32,
                                                                           max(3, latency_repeats // 3))):
            for row, ms in zip(rows, latency_ms(task, models, latency_batch(task, dataset, size), reps)):
                row[key] = round(ms, 3)
        result.report = {"split": split, "samples": len(dataset), "main_metric": task.main_metric,
                         "main_metric_mode": task.main_metric_mode, "threads": torch.get_num_threads(),
                         "rows": rows, "parity": manifest["parity"]}
        write_export_report(out, result.report, manifest)
        if out.resolve().parent == run_dir.resolve() and (run_dir / "metrics.json").is_file():
            from ..evaluation.report import update_model_card

            update_model_card(run_dir, task)  # the run's model card gains the export table
    return result


# ----------------------------------------------------------------------------- adapter libraries
def adapter_tensors(module: nn.Module, graph_names: set[str], exported: str, name: str) -> dict[str, Any]:
    """Adapter ``name``'s weights under the initializer names the graph gave adapter ``exported``'s
    (peft names each adapter's parameters ``...lora_A.<adapter>.weight``, ``modules_to_save.<adapter>...``)."""
    params = dict(module.named_parameters())
    out = {}
    for pname in params:
        if f".{exported}." in pname and pname in graph_names:
            own = pname.replace(f".{exported}.", f".{name}.")
            if own not in params:
                raise OmnituneError(f"adapter {name!r} has no {own} (adapters of one export must share targets)")
            out[pname] = params[own].detach().cpu().float().contiguous().numpy()
    return out


def weights_to_inputs(path: Path, names: set[str]) -> set[str]:
    """Turn the initializers named ``names`` into float graph inputs of the same shape; returns them."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(path))
    moved = [i for i in m.graph.initializer if i.name in names]
    for init in moved:
        m.graph.initializer.remove(init)
        m.graph.input.append(helper.make_tensor_value_info(init.name, TensorProto.FLOAT, list(init.dims)))
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return {i.name for i in moved}


def export_adapters(source: str | Path, out_dir: str | Path | None = None, *, opset: int = OPSET,
                    atol: float = DEFAULT_ATOL, min_agreement: float = DEFAULT_MIN_AGREEMENT,
                    parity_samples: int = 32) -> ExportResult:
    """An adapter library (or a PEFT run) as one ONNX graph of the base with the first adapter,
    plus one weights file per adapter (``adapters/<name>.safetensors``: its LoRA matrices and head
    under the graph's initializer names), switched at session creation in ONNX Runtime (Olive's
    generate-adapter idea). Parity is checked per adapter against PyTorch with that adapter active.
    The adapters must share targets, rank and alpha: the LoRA scale is a constant of the graph."""
    import onnx
    import onnxruntime
    from safetensors.numpy import save_file

    from ..adapters import peft as peft_lib
    from ..base.recipe import read_yaml
    from ..evaluation.report import write_json
    from ..runs import MODEL_DIR, RECIPE_FILE, load_run

    source = Path(source)
    if not (source / RECIPE_FILE).is_file():
        raise OmnituneError(f"{source}: not a run folder or adapter library (no {RECIPE_FILE})")
    exportable_task(read_yaml(source / RECIPE_FILE).get("task", ""))
    rec, task, model = load_run(source)
    spec = export_spec(task)
    if spec.runtime not in ("named", "tensor"):
        raise OmnituneError(f"omnitune export --all-adapters: one-graph runtimes only (named, tensor), "
                            f"not task {rec.task!r}'s {spec.runtime!r}")
    if not peft_lib.is_adapter_wrapper(model) or not hasattr(model, "peft_config"):
        raise OmnituneError(f"{source}: no peft adapters to export one by one (use plain `omnitune export`)")
    names = list(model.peft_config)
    shape = {n: (sorted(model.peft_config[n].target_modules or []), getattr(model.peft_config[n], "r", None),
                 getattr(model.peft_config[n], "lora_alpha", None)) for n in names}
    if len({repr(v) for v in shape.values()}) > 1:
        raise OmnituneError(f"{source}: adapters differ in targets, rank or alpha ({shape}); export them one at a time")
    first = names[0]
    peft_lib.switch_adapter(model, first)
    model.eval()
    out = Path(out_dir) if out_dir else source / "export-onnx-adapters"
    (out / "adapters").mkdir(parents=True, exist_ok=True)
    bundle = task.build_datasets()
    example = task.collate([bundle.validation[i] for i in range(min(2, len(bundle.validation)))])
    parts = modules_and_examples(spec, peft_lib.task_model(model), example, None)
    (graph, module, used, args), = parts
    # The exported adapter's weights are traced as distinct random values (the exporter merges
    # initializers of equal value, e.g. untrained zero LoRA B matrices, which could not then be
    # swapped one by one), without constant folding (each stays named after its parameter), and
    # become graph inputs that each adapter's weights file feeds.
    own = {n: p for n, p in module.named_parameters() if f".{first}." in n}
    saved = {n: p.detach().clone() for n, p in own.items()}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in own.values():
            p.copy_(torch.randn(p.shape, generator=gen))
    try:
        info = export_graph(graph, module, used, args, out / "model.onnx", opset, fold=False)
    finally:
        with torch.no_grad():
            for n, p in own.items():
                p.copy_(saved[n])
    graph_names = weights_to_inputs(out / "model.onnx", set(own))
    copy_support_files(source / MODEL_DIR, out)
    shutil.copy2(source / RECIPE_FILE, out / RECIPE)
    adapters = {}
    for name in names:
        tensors = adapter_tensors(module, graph_names, first, name)
        save_file(tensors, str(out / "adapters" / f"{name}.safetensors"))
        adapters[name] = {"file": f"adapters/{name}.safetensors", "tensors": len(tensors),
                          "bytes": (out / "adapters" / f"{name}.safetensors").stat().st_size}
    manifest: dict[str, Any] = {
        "format": "onnx", "task": rec.task, "runtime": spec.runtime, "note": spec.note, "opset": opset,
        "exporter": "torch.onnx.export (TorchScript, dynamo=False), no constant folding", "source_run": str(source.resolve()),
        "recipe": rec.name, "base_model": rec.model.name, "adapter_merged": False, "adapter": first,
        "graphs": {"model": info}, "files": {"fp32": {"model": "model.onnx"}}, "decoding": None,
        "adapters": adapters, "default_adapter": first, "quantization": None,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__},
        "tolerance": {"atol": atol, "min_agreement": min_agreement}, "parity": {}}
    batches = first_batches(task, bundle.validation, parity_samples, 8)
    failures = []
    from .onnx_predict import adapter_session

    for name in names:
        peft_lib.switch_adapter(model, name)
        result = parity(spec, parts, {"model": adapter_session(out, manifest, name)}, batches, None)
        bad = parity_problems(result, "fp32", atol, min_agreement, min_agreement)
        result["passed"] = not bad
        manifest["parity"][name] = result
        if bad:
            failures.append(f"adapter {name}: " + " and ".join(bad))
    write_json(out / MANIFEST, manifest)
    if failures:
        raise OmnituneError(f"omnitune export: adapter parity failed against PyTorch: {'; '.join(failures)} "
                            f"(kept in {out} for inspection)")
    return ExportResult(out, manifest)
