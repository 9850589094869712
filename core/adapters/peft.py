"""Parameter-efficient fine-tuning for every task: LoRA, IA3 and QLoRA through the peft library,
bottleneck adapters through core/adapters/bottleneck.py (peft has none; same interface and folder layout).

The adapter is injected *in place*: :func:`apply_peft` returns peft's ``PeftModel`` wrapper, and the
trainer keeps training the task's own model object (``peft_model.get_base_model()``), which now holds
the adapter layers. The task's layer groups, forward and metrics therefore work unchanged; the
wrapper is used only to save and load adapter-only folders and to merge.

Everything takes explicit arguments; :func:`peft_kwargs` in core/api.py's style turns the recipe's
``finetune.peft`` section into them.

>>> from transformers import BertConfig, BertForSequenceClassification
>>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1,
...     num_attention_heads=2, intermediate_size=64, vocab_size=50))
>>> wrapped = apply_peft(model, [model.classifier], method="lora", r=4, alpha=8, dropout=0.0)
>>> trainable_share(model)[0] < trainable_share(model)[1] / 4
True
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..adapters import bottleneck
from ..base.errors import OmnituneError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# The one per-architecture table of default places for adapters, keyed by the Hugging Face
# ``config.model_type``. It holds only what peft's own tables (peft.utils.constants) lack:
# architecture_targets() reads ours first, then peft's, so every architecture peft knows (BERT,
# Llama, Mistral, Qwen, ...) gets peft's defaults, and a new peft release extends ours for free.
#   lora: peft has no Whisper entry; q/v projections are the original LoRA paper's choice.
#   ia3 / ia3_feedforward: the same for IA3 (keys, values and the feed-forward output, scaled).
#   bottleneck: peft has no bottleneck adapters; Houlsby's placement, after each attention output
#   projection and each feed-forward output ("output.dense" also matches BERT's
#   attention.output.dense; Whisper's out_proj covers self- and cross-attention).
ARCHITECTURE_TARGETS: dict[str, dict[str, list[str]]] = {
    "bert": {"bottleneck": ["attention.output.dense", "output.dense"]},
    "llama": {"bottleneck": ["o_proj", "down_proj"]},
    # peft has no Marian default (it would target every Linear, the tied lm_head included).
    "marian": {"lora": ["q_proj", "v_proj"]},
    "whisper": {"lora": ["q_proj", "v_proj"], "ia3": ["k_proj", "v_proj", "fc2"], "ia3_feedforward": ["fc2"],
                "bottleneck": ["out_proj", "fc2"]},
}


def _peft_tables() -> dict[str, dict[str, list[str]]]:
    from peft.utils import constants

    return {"lora": constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
            "ia3": constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
            "ia3_feedforward": constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING}


def architecture_targets(model_type: str | None, kind: str) -> list[str] | None:
    """Default module names for ``kind`` (lora, ia3, ia3_feedforward, bottleneck) on a Hugging
    Face ``model_type``: ours (:data:`ARCHITECTURE_TARGETS`), else peft's; None when neither knows.

    >>> architecture_targets("whisper", "lora"), architecture_targets("mistral", "lora")
    (['q_proj', 'v_proj'], ['q_proj', 'v_proj'])
    """
    if model_type is None:
        return None
    own = ARCHITECTURE_TARGETS.get(model_type, {}).get(kind)
    if own is not None:
        return list(own)
    found = _peft_tables().get(kind, {}).get(model_type)
    return list(found) if found is not None else None


def check_quantization(quantize: str) -> None:
    """QLoRA needs a CUDA GPU and bitsandbytes; say so before any data or model is loaded."""
    if quantize == "none":
        return
    if not torch.cuda.is_available():
        raise OmnituneError(
            f"finetune.peft.quantize={quantize!r} (QLoRA) needs a CUDA GPU: bitsandbytes 4-bit weights do not "
            "run on this machine's CPU. Use finetune.peft.quantize=none (plain LoRA) here.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise OmnituneError("finetune.peft.quantize='4bit' needs bitsandbytes: pip install 'omnitune[qlora]'") from None


def quantize_4bit(model: nn.Module, head_modules: list[nn.Module]) -> None:
    """QLoRA's base: every Linear outside the head (and the output embeddings) becomes a bitsandbytes
    NF4 ``Linear4bit`` with bf16 compute; peft then puts LoRA on those layers. The weights are
    quantised when the model moves to the GPU. Call :func:`check_quantization` first."""
    import bitsandbytes as bnb

    head = {id(m) for h in head_modules for m in h.modules()}
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or id(child) in head or child is out_emb:
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=torch.bfloat16, quant_type="nf4")
            q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, child_name, q)
    model.cuda()


def _model_type(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)  # Hugging Face models carry one; timm/torchvision do not
    return getattr(config, "model_type", None)


def _module_names(model: nn.Module, modules: Iterable[nn.Module]) -> list[str]:
    wanted = {id(m) for m in modules}
    return [name for name, m in model.named_modules() if id(m) in wanted and name]


def default_target_modules(model: nn.Module, head_modules: list[nn.Module], method: str,
                           block_modules: list[nn.Module] | None = None) -> list[str]:
    """The layers to adapt when the recipe lists none: per architecture, else every Linear and
    (non-grouped) Conv2d outside the head, e.g. a ResNet's or EfficientNet's convolutions.
    Bottleneck adapters go after attention and feed-forward outputs (per architecture), else after
    each of ``block_modules`` (the task's layer groups between the stem and the head: CNN stages)."""
    known = architecture_targets(_model_type(model), method)
    if known is not None:
        return known
    if method == "bottleneck":
        names = _module_names(model, block_modules or [])
        if not names:
            raise OmnituneError(f"{type(model).__name__}: no default places for bottleneck adapters; list "
                                "finetune.peft.target_modules")
        return names
    head = {id(m) for h in head_modules for m in h.modules()}
    names = [n for n, m in model.named_modules()
             if id(m) not in head and (isinstance(m, nn.Linear)
                                       or (isinstance(m, nn.Conv2d) and m.groups == 1))]
    if not names:
        raise OmnituneError(f"{type(model).__name__}: no Linear/Conv2d layers to adapt; list "
                            "finetune.peft.target_modules")
    return names


def default_feedforward_modules(model: nn.Module, targets: list[str]) -> list[str]:
    """IA3's feed-forward modules (scaled on their input) when the targets are the architecture's
    defaults; none otherwise (every target is then scaled on its output)."""
    kind = _model_type(model)
    if targets == architecture_targets(kind, "ia3"):
        return architecture_targets(kind, "ia3_feedforward") or []
    return []


def default_modules_to_save(model: nn.Module, head_modules: list[nn.Module]) -> list[str]:
    """The task's head trains in full beside the adapter: a classifier sized for a new label set
    starts random and an adapter cannot stand in for it. Norms stay as pretrained, and so do input
    and output embeddings (an LM's or Whisper's head is the token embedding, tied or not: the
    vocabulary is not new, and a trainable copy would be most of the model's size)."""
    embeddings = [model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None,
                  model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None]
    norm_like = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
    keep = [m for m in head_modules
            if any(True for _ in m.parameters()) and not any(m is e for e in embeddings)
            and not isinstance(m, norm_like) and "norm" not in type(m).__name__.lower()]
    return _module_names(model, keep)


def apply_peft(model: nn.Module, head_modules: list[nn.Module], *, method: str = "lora", r: int = 8,
               alpha: float = 16.0, dropout: float = 0.05, target_modules: list[str] | None = None,
               feedforward_modules: list[str] | None = None, modules_to_save: list[str] | None = None,
               adapter_name: str = "default", block_modules: list[nn.Module] | None = None):
    """Inject an adapter into ``model`` in place, freeze the rest; returns peft's wrapper (or
    core's :class:`~.bottleneck.BottleneckModel`, which has the same interface).

    ``model`` itself keeps working as before (same forward, same layer groups) and is what trains.
    """
    from peft import IA3Config, LoraConfig, get_peft_model

    targets = target_modules or default_target_modules(model, head_modules, method, block_modules)
    to_save = default_modules_to_save(model, head_modules) if modules_to_save is None else modules_to_save
    if method == "bottleneck":
        return bottleneck.BottleneckModel(model, {"target_modules": targets, "r": r, "dropout": dropout,
                                                  "modules_to_save": to_save}, adapter_name)
    if method == "lora":
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                            modules_to_save=to_save or None)
    elif method == "ia3":
        ff = default_feedforward_modules(model, targets) if feedforward_modules is None else feedforward_modules
        config = IA3Config(target_modules=targets, feedforward_modules=ff, modules_to_save=to_save or None)
    else:
        raise OmnituneError(f"finetune.peft.method: unknown method {method!r}")
    try:
        # autocast_adapter_dtype keeps adapter weights fp32 when the base is bf16 (stable updates).
        return get_peft_model(model, config, adapter_name=adapter_name)
    except ValueError as exc:  # peft names the target modules it could not find
        raise OmnituneError(f"finetune.peft: {exc}") from None


def is_adapter_wrapper(model: nn.Module) -> bool:
    """peft's PeftModel or core's BottleneckModel (both carry ``peft_config``)."""
    return hasattr(model, "peft_config")


def task_model(model: nn.Module) -> nn.Module:
    """The task's own model inside an adapter wrapper (the adapters live in it, so it forwards with
    the active one), or ``model`` itself: what task code such as forward and predict expects."""
    return model.get_base_model() if is_adapter_wrapper(model) else model


def trainable_share(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; the frozen copy peft keeps of a saved module counts once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# ----------------------------------------------------------------------------- adapter-only checkpoints
def checkpoint_names(model: nn.Module) -> set[str]:
    """What an adapter-only checkpoint holds: the trainable parameters and every buffer (BatchNorm
    statistics move in training even where weights are frozen; buffers are small)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    names |= {n for n, _ in model.named_buffers()}
    return names & set(model.state_dict())  # non-persistent buffers (position ids) are not saved


# ----------------------------------------------------------------------------- adapter folders
def list_adapters(folder: Path) -> list[dict[str, Any]]:
    """Adapters saved in a folder: peft keeps "default" at the top and every other name in a
    sub-folder. Returns name, method, rank, target modules and size on disk."""
    folder = Path(folder)
    found = []
    candidates = [(folder, "default")] + [(d, d.name) for d in sorted(folder.iterdir()) if d.is_dir()] \
        if folder.is_dir() else []
    for where, name in candidates:
        cfg_file = where / ADAPTER_CONFIG
        if not cfg_file.is_file():
            continue
        cfg = json.loads(cfg_file.read_text())
        weights = where / ADAPTER_WEIGHTS
        found.append({"name": name, "path": str(where), "method": cfg.get("peft_type", "?").lower(),
                      "r": cfg.get("r"), "target_modules": cfg.get("target_modules"),
                      "modules_to_save": cfg.get("modules_to_save"),
                      "bytes": weights.stat().st_size if weights.is_file() else 0})
    return found


def save_adapter(peft_model, out_dir: Path) -> None:
    """Adapter-only files (adapter_config.json + adapter_model.safetensors) for every adapter."""
    peft_model.save_pretrained(str(out_dir))


def attach_adapters(base: nn.Module, folder: Path, names: list[str] | None = None, active: str | None = None):
    """Load the adapters saved in ``folder`` onto ``base`` (built exactly as for training) and make
    ``active`` (default: the first) the one in use. Returns the PeftModel."""
    from peft import PeftModel

    found = {a["name"]: a for a in list_adapters(folder)}
    available = {name: a["path"] for name, a in found.items()}
    if not available:
        raise OmnituneError(f"{folder}: no adapter found (no {ADAPTER_CONFIG})")
    names = names or list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise OmnituneError(f"{folder}: no adapter {unknown[0]!r} (adapters: {', '.join(available)})")
    methods = {found[n]["method"] for n in names}
    if "bottleneck" in methods and len(methods) > 1:
        raise OmnituneError(f"{folder}: bottleneck adapters and peft adapters ({', '.join(sorted(methods))}) cannot "
                            "be attached to one model; keep them in separate libraries")
    loader = bottleneck.BottleneckModel if "bottleneck" in methods else PeftModel
    model = loader.from_pretrained(base, available[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(available[name], adapter_name=name)
    switch_adapter(model, active or names[0])
    return model.eval()


def switch_adapter(peft_model, name: str) -> None:
    if name not in peft_model.peft_config:
        raise OmnituneError(f"no adapter {name!r} loaded (loaded: {', '.join(peft_model.peft_config)})")
    peft_model.set_adapter(name)


def merge_adapter(peft_model, name: str | None = None) -> nn.Module:
    """The base model with adapter ``name`` folded into its weights (no peft layers left)."""
    if name is not None:
        switch_adapter(peft_model, name)
    return peft_model.merge_and_unload(adapter_names=[name] if name else None)


def add_to_library(library: Path, run_dir: Path, recipe_file: str, model_dir: str, name: str | None = None) -> str:
    """Copy a PEFT run's adapter into an adapter library (a folder laid out like a run: the first
    run's recipe, and ``model/<name>/`` per adapter), so several adapters share one base model.

    Adapters must come from runs on the same base model and model section; returns the name used.
    """
    import yaml

    library, run_dir = Path(library), Path(run_dir)
    adapters = list_adapters(run_dir / model_dir)
    if not adapters:
        raise OmnituneError(f"{run_dir}: the run saved no adapter (was finetune.peft set?)")
    run_recipe = yaml.safe_load((run_dir / recipe_file).read_text())
    src = adapters[0]
    name = name or (src["name"] if src["name"] != "default" else run_recipe["name"])
    lib_recipe = library / recipe_file
    if lib_recipe.is_file():
        lib_model = yaml.safe_load(lib_recipe.read_text())["model"]
        if lib_model != run_recipe["model"]:
            raise OmnituneError(f"{run_dir}: base model {run_recipe['model']} differs from the library's {lib_model}")
    else:
        library.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / recipe_file, lib_recipe)
    dest = library / model_dir
    kinds = {a["method"] == "bottleneck" for a in list_adapters(dest)} | {src["method"] == "bottleneck"}
    if len(kinds) > 1:
        raise OmnituneError(f"{library}: bottleneck adapters and peft adapters (LoRA, IA3) cannot share a "
                            "library (one model cannot carry both); use another library folder")
    if (dest / name).exists():
        raise OmnituneError(f"{library}: already has an adapter {name!r}; pass another --name")
    dest.mkdir(exist_ok=True)
    shutil.copytree(src["path"], dest / name, ignore=lambda d, files: [f for f in files if Path(d, f).is_dir()])
    # Tokenizer, label names and other files that describe the base and the task come along once.
    for f in (run_dir / model_dir).iterdir():
        if f.is_file() and f.name not in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, "README.md") and not (dest / f.name).exists():
            shutil.copy2(f, dest / f.name)
    return name
