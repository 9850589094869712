"""Image classifiers: build (timm, torchvision, saved folders, assets), group, save and load.

A model name is one of:
- a timm name (``resnet18``, ``efficientnet_b0``, ``hf-hub:timm/...``): timm's own weights;
- ``tv:NAME`` (``tv:resnet50``): torchvision's classification models and their DEFAULT weights;
- a folder written by :func:`save_folder` (a fine-tuned model), or ``asset:NAME`` that resolves
  to one (``asset:effnet-lite0``).

Every builder returns the model with its head sized for the recipe's classes and the model's own
data config (input size, mean, std, interpolation, crop share), which the transforms use unless
the recipe overrides them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from omnitune.core.base.assets import resolve as resolve_asset
from omnitune.core.base.errors import OmnituneError
from omnitune.core.adapters.peft import is_adapter_wrapper
from omnitune.core.base.task import LayerGroup

TV_PREFIX = "tv:"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Preprocessing:
    """What the transforms need to feed a model the way it was trained."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    crop_pct: float = 0.875


# ----------------------------------------------------------------------------- building
def _timm_data_config(model: nn.Module) -> Preprocessing:
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    return Preprocessing(
        input_size=int(cfg["input_size"][-1]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
        interpolation=str(cfg["interpolation"]), crop_pct=float(cfg["crop_pct"]),
    )


def _replace_tv_head(model: nn.Module, num_classes: int) -> None:
    """Swap torchvision's last nn.Linear (fc, classifier[-1], heads.head) for a fresh one."""
    last_name = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_name = name
    if last_name is None:
        raise OmnituneError("torchvision model has no nn.Linear classifier to replace")
    parent_name, _, attr = last_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    if old.out_features != num_classes:
        setattr(parent, attr, nn.Linear(old.in_features, num_classes))


def _build_torchvision(arch: str, pretrained: bool, num_classes: int) -> tuple[nn.Module, Preprocessing]:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT if pretrained else None
    except ValueError:
        raise OmnituneError(f"model.name: unknown torchvision model {arch!r}") from None
    model = torchvision.models.get_model(arch, weights=weights)
    _replace_tv_head(model, num_classes)
    return model, resolve_preprocessing(TV_PREFIX + arch, pretrained)


def _create_arch(architecture: str, num_classes: int, pretrained: bool, **timm_kwargs: Any) -> nn.Module:
    import timm

    if architecture.startswith(TV_PREFIX):
        return _build_torchvision(architecture[len(TV_PREFIX):], pretrained, num_classes)[0]
    name = architecture.removeprefix("timm:")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **timm_kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise OmnituneError(f"model.name: unknown timm model {name!r}") from None
        raise


def read_folder_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise OmnituneError(f"{folder}: not a saved image classifier (no config.json)")
    config = json.loads(path.read_text())
    if config.get("omnitune_task") != "image-classification":
        raise OmnituneError(f"{folder}: config.json is not an omnitune image classifier")
    return config


def load_folder(folder: Path, pretrained: bool = True, num_classes: int | None = None,
                **timm_kwargs: Any) -> tuple[nn.Module, Preprocessing, dict[str, Any]]:
    """A saved folder -> (model, data config, config). ``pretrained=False`` keeps only the
    architecture (random init); ``num_classes`` resizes the head when it differs."""
    from safetensors.torch import load_file

    config = read_folder_config(folder)
    saved_classes = int(config["num_classes"])
    model = _create_arch(config["architecture"], saved_classes, False, **timm_kwargs)
    if pretrained:
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    if num_classes is not None and num_classes != saved_classes:
        reset_head(model, config["architecture"], num_classes)
    dc = config["data_config"]
    data = Preprocessing(int(dc["input_size"][-1]), tuple(dc["mean"]), tuple(dc["std"]),
                           dc["interpolation"], float(dc["crop_pct"]))
    return model, data, config


def reset_head(model: nn.Module, architecture: str, num_classes: int) -> None:
    if architecture.startswith(TV_PREFIX):
        _replace_tv_head(model, num_classes)
    else:
        model.reset_classifier(num_classes)


def build_classifier(
    name: str, *, pretrained: bool, num_classes: int, drop_rate: float | None = None,
    drop_path_rate: float | None = None,
) -> tuple[nn.Module, Preprocessing, str]:
    """(model with a ``num_classes`` head, its data config, its architecture id)."""
    timm_kwargs = {k: v for k, v in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate))
                   if v is not None}
    local = Path(resolve_asset(name)) if name.startswith("asset:") else Path(name)
    if local.is_dir():
        model, data, config = load_folder(local, pretrained, num_classes, **timm_kwargs)
        return model, data, config["architecture"]
    if name.startswith(TV_PREFIX):
        model, data = _build_torchvision(name[len(TV_PREFIX):], pretrained, num_classes)
        return model, data, name
    model = _create_arch(name, num_classes, pretrained, **timm_kwargs)
    return model, _timm_data_config(model), f"timm:{name}"


def resolve_preprocessing(name: str, pretrained: bool) -> Preprocessing:
    """The model's own preprocessing, known before the model is built (datasets come first)."""
    local = Path(resolve_asset(name)) if name.startswith("asset:") else Path(name)
    if local.is_dir():
        dc = read_folder_config(local)["data_config"]
        return Preprocessing(int(dc["input_size"][-1]), tuple(dc["mean"]), tuple(dc["std"]),
                             dc["interpolation"], float(dc["crop_pct"]))
    if name.startswith(TV_PREFIX):
        import torchvision

        if not pretrained:
            return Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD)
        try:
            tf = torchvision.models.get_model_weights(name[len(TV_PREFIX):]).DEFAULT.transforms()
        except ValueError:
            raise OmnituneError(f"model.name: unknown torchvision model {name[len(TV_PREFIX):]!r}") from None
        size = int(tf.crop_size[0])
        return Preprocessing(size, tuple(tf.mean), tuple(tf.std), str(tf.interpolation.value),
                             size / float(tf.resize_size[0]))
    # A timm model carries its default pretrained config even when built without weights; the
    # smallest head keeps this cheap.
    return _timm_data_config(_create_arch(name, 1, False))


# ----------------------------------------------------------------------------- saving
def save_folder(model: nn.Module, out_dir: Path, *, architecture: str, label_names: list[str],
                data_config: Preprocessing, extra: dict[str, Any] | None = None) -> None:
    """model.safetensors + config.json: everything :func:`load_folder` needs, no pickles.

    A PEFT wrapper saves its adapter-only files instead of model.safetensors;
    the base is rebuilt from the recipe when the run is loaded."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    if is_adapter_wrapper(model):
        model.save_pretrained(str(out_dir))
    else:
        # clone(): safetensors refuses tensors that share storage (e.g. tied or viewed weights).
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(out_dir / "model.safetensors"))
    dc = asdict(data_config)
    dc["input_size"] = [3, data_config.input_size, data_config.input_size]
    config = {"omnitune_task": "image-classification", "architecture": architecture,
              "num_classes": len(label_names), "label_names": list(label_names), "data_config": dc,
              **(extra or {})}
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))


# ----------------------------------------------------------------------------- layer groups
def classifier_module(model: nn.Module) -> nn.Module:
    """The head that was replaced for the recipe's classes."""
    if hasattr(model, "get_classifier"):  # every timm model
        return model.get_classifier()
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise OmnituneError(f"{type(model).__name__}: no linear classifier found")
    return last


class _ParamHolder(nn.Module):
    """Holds parameters owned directly by a parent module (a ViT's cls_token) for one group, by
    identity: the same nn.Parameter objects, so freezing them freezes the model's."""

    def __init__(self, params: dict[str, nn.Parameter]) -> None:
        super().__init__()
        for name, p in params.items():
            self.register_parameter(name.replace(".", "_"), p)


_TV_STAGE_CONTAINERS = ("features", "encoder", "layers")
_CONTAINERS = ("blocks", "stages", "features", "layers", "encoder")


def _group_ids(model: nn.Module) -> dict[str, int]:
    """Parameter name -> ordinal of its stage, input to output."""
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        groups = group_parameters(model, model.group_matcher(coarse=True))
        return {n: i for i, names in enumerate(groups.values()) for n in names}
    # torchvision: one group per top-level child with parameters, stage containers (`features`,
    # `encoder.layers`) split into their children; leading leaf modules (conv1, bn1) are the stem.
    ids: dict[str, int] = {}
    units: list[str] = []

    def walk(prefix: str, module: nn.Module, depth: int) -> None:
        for cname, child in module.named_children():
            if cname in _TV_STAGE_CONTAINERS and depth < 3:
                walk(f"{prefix}{cname}.", child, depth + 1)
            else:
                units.append(f"{prefix}{cname}")

    walk("", model, 0)
    ordinal, seen_stage = 0, False
    for unit in units:
        module = model.get_submodule(unit)
        if not any(True for _ in module.parameters()):
            continue
        if seen_stage or any(True for _ in module.children()):
            seen_stage, ordinal = True, ordinal + 1
        for pname, _ in module.named_parameters():
            ids[f"{unit}.{pname}"] = ordinal
    for pname, _ in model.named_parameters():
        ids.setdefault(pname, 0)  # owned by a container itself (class token, position embedding)
    return ids


def _group_name(names: list[str], index: int) -> str:
    """A readable name from the group's parameter names: "layer1", "blocks.3", "head.norm"."""
    if index == 0:
        return "stem"
    split = [n.split(".")[:-1] for n in names]  # drop the tensor name (weight, bias)
    common: list[str] = []
    for parts in zip(*split):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    if common:
        # Stop at the stage index ("layer1", "blocks.3", "encoder_layer_0"), not the block inside.
        cut = next((i + 1 for i, c in enumerate(common) if any(ch.isdigit() for ch in c)), 3)
        return ".".join(common[:cut])
    keys = set()
    for n in names:
        parts = n.split(".")
        deep = len(parts) > 2 and parts[0] in _CONTAINERS and parts[1].isdigit()
        keys.add(".".join(parts[:2]) if deep else parts[0])
    return "+".join(sorted(keys))[:60]


def image_layer_groups(model: nn.Module) -> list[LayerGroup]:
    """stem, each stage, then the head (the classifier only) last; covers every parameter once.

    Each group lists the largest sub-modules whose parameters all fall in it, so a group's
    BatchNorm layers (and their running statistics) are reachable for freeze_norm_stats.
    """
    head = classifier_module(model)
    head_ids = {id(p) for p in head.parameters()}
    ids = _group_ids(model)
    names = {id(p): n for n, p in model.named_parameters()}
    order = sorted({ids[n] for pid, n in names.items() if pid not in head_ids})
    rank = {g: i for i, g in enumerate(order)}
    head_rank = len(order)

    def group_of(p: nn.Parameter) -> int:
        return head_rank if id(p) in head_ids else rank[ids[names[id(p)]]]

    members: dict[int, list[nn.Module]] = {i: [] for i in range(head_rank + 1)}

    def assign(module: nn.Module) -> None:
        owned = {group_of(p) for p in module.parameters()}
        if not owned:
            return
        if len(owned) == 1:
            members[owned.pop()].append(module)
            return
        direct: dict[int, dict[str, nn.Parameter]] = {}
        for pname, p in module.named_parameters(recurse=False):
            direct.setdefault(group_of(p), {})[pname] = p
        for g, params in direct.items():
            members[g].append(_ParamHolder(params))
        for child in module.children():
            assign(child)

    assign(model)
    groups = []
    by_rank: dict[int, list[str]] = {}
    for pid, n in names.items():
        by_rank.setdefault(head_rank if pid in head_ids else rank[ids[n]], []).append(n)
    for i in range(head_rank + 1):
        name = "head" if i == head_rank else _group_name(by_rank.get(i, []), i)
        groups.append(LayerGroup(name=name, modules=members[i]))
    return groups
