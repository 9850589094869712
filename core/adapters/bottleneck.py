"""Bottleneck adapters (Houlsby et al., 2019), implemented in core because peft offers none.

An adapter is a small residual MLP, ``h + up(act(down(h)))``, inserted after a layer: by default
after every attention output projection and every feed-forward output of a transformer (Houlsby's
placement), or after every stage of a CNN. ``up`` starts at zero, so an untrained adapter leaves
the model's outputs exactly as they were.

Nothing in the base model is replaced: each adapted layer gets a child module holding its adapters
(one per name) and a forward hook that passes the layer's output through the active one. The
base's state-dict keys are unchanged, the adapter parameters sit inside the layer groups the task
already defines (so optimiser groups, layer-wise LR and adapter-only checkpoints need no special
case), and several named adapters can share one base.

:class:`BottleneckModel` offers the part of peft's ``PeftModel`` interface that omnitune uses
(``get_base_model``, ``peft_config``, ``set_adapter``, ``load_adapter``, ``save_pretrained``,
``merge_and_unload``) and writes the same folder layout (``adapter_config.json`` +
``adapter_model.safetensors``; the adapter named "default" at the top, others in sub-folders), so
adapter libraries, ``--adapter`` switching and ``omnitune adapters list`` treat it like LoRA.
Bottleneck adapters add layers, so there are no base weights to merge them into: merging says so.

>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> x = torch.randn(3, 4)
>>> before = net(x)
>>> wrapped = BottleneckModel(net, {"target_modules": ["0"], "r": 2}, "default")
>>> torch.equal(wrapped(x), before)  # a fresh adapter is the identity
True
>>> sorted(n for n, p in net.named_parameters() if p.requires_grad)[0]
'0.omnitune_bottleneck.adapters.default.down.bias'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..base.errors import OmnituneError

PEFT_TYPE = "BOTTLENECK"
CHILD = "omnitune_bottleneck"  # the attribute each adapted layer gets
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# Default places per architecture (Houlsby's: after each attention output projection and each
# feed-forward output) are in the one table core/adapters/peft.py keeps for every adapter method:
# peft.ARCHITECTURE_TARGETS[model_type]["bottleneck"].


class Bottleneck(nn.Module):
    """``h + up(dropout(gelu(down(h))))`` over the channel axis ``channel_dim`` (-1 for transformer
    hidden states, 1 for CNN feature maps)."""

    def __init__(self, dim: int, size: int, dropout: float = 0.0, channel_dim: int = -1) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(dim, size), nn.Linear(size, dim)
        self.act, self.dropout, self.channel_dim = nn.GELU(), nn.Dropout(dropout), channel_dim
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # identity at the start: training begins from the base model
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = h if self.channel_dim == -1 else h.movedim(self.channel_dim, -1)
        delta = self.up(self.dropout(self.act(self.down(x.to(self.down.weight.dtype)))))
        if self.channel_dim != -1:
            delta = delta.movedim(-1, self.channel_dim)
        return h + delta.to(h.dtype)


class SiteAdapters(nn.Module):
    """The adapters of one layer, by name; ``active`` (or None) is the one applied."""

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.active: str | None = None

    def forward(self, output: Any) -> Any:
        if self.active is None or self.active not in self.adapters:
            return output
        if isinstance(output, tuple):  # e.g. a block that returns (hidden_states, attentions)
            return (self.adapters[self.active](output[0]),) + output[1:]
        return self.adapters[self.active](output)


def _adapt_output(module: nn.Module, args: Any, output: Any) -> Any:
    return getattr(module, CHILD)(output)


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _channels(module: nn.Module) -> tuple[int, int]:
    """(width, channel axis) of a layer's output: from the layer itself, or from the last layer with
    a known width inside it (a CNN stage ends in a convolution or batch norm)."""
    for m in [module] + list(module.modules())[::-1]:
        if isinstance(m, nn.Linear):
            return m.out_features, -1
        if isinstance(m, nn.Conv2d):
            return m.out_channels, 1
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return m.num_features, 1
        if isinstance(m, nn.LayerNorm):
            return m.normalized_shape[-1], -1
    raise OmnituneError(f"{type(module).__name__}: cannot tell its output width; list finetune.peft.target_modules "
                        "with Linear/Conv2d layers")


class BottleneckModel(nn.Module):
    """Named bottleneck adapters on ``model`` (changed in place; ``model`` keeps its own forward).

    ``config``: ``target_modules`` (module names or name suffixes), ``r`` (bottleneck width),
    ``dropout``, ``modules_to_save`` (trained in full beside the adapter, e.g. a new classifier;
    each adapter keeps its own copy of their weights).
    """

    def __init__(self, model: nn.Module, config: dict[str, Any] | None = None, adapter_name: str = "default") -> None:
        super().__init__()
        self.base_model = model
        self.peft_config: dict[str, dict[str, Any]] = {}
        self.active_adapter: str | None = None
        self._saved_heads: dict[str, dict[str, torch.Tensor]] = {}  # modules_to_save of inactive adapters
        if config is not None:  # None: no adapter yet (from_pretrained loads one)
            self.add_adapter(adapter_name, config)
            self.set_adapter(adapter_name)

    # --- PeftModel's interface, as far as omnitune uses it
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)  # config, generate, ... of the task's model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)

    def get_base_model(self) -> nn.Module:
        return self.base_model

    def add_adapter(self, name: str, config: dict[str, Any]) -> None:
        if name in self.peft_config:
            raise OmnituneError(f"an adapter named {name!r} is already loaded")
        targets = list(config["target_modules"])
        config = {"peft_type": PEFT_TYPE, "r": int(config.get("r", 8)), "dropout": float(config.get("dropout", 0.0)),
                  "target_modules": targets, "modules_to_save": list(config.get("modules_to_save") or [])}
        sites = [(n, m) for n, m in self.base_model.named_modules()
                 if n and _matches(n, targets) and CHILD not in n.split(".")]
        if not sites:
            raise OmnituneError(f"finetune.peft.target_modules {targets}: no such module in "
                                f"{type(self.base_model).__name__}")
        for _, module in sites:
            if not hasattr(module, CHILD):
                module.add_module(CHILD, SiteAdapters())
                module.register_forward_hook(_adapt_output)
            width, axis = _channels(module)
            ref = next(module.parameters(), None)
            getattr(module, CHILD).adapters[name] = Bottleneck(width, config["r"], config["dropout"], axis).to(
                ref.device if ref is not None else "cpu")
        self.peft_config[name] = config

    def _sites(self) -> list[SiteAdapters]:
        return [m for m in self.base_model.modules() if isinstance(m, SiteAdapters)]

    def _head_state(self, name: str) -> dict[str, torch.Tensor]:
        out = {}
        for module_name in self.peft_config[name]["modules_to_save"]:
            for key, value in self.base_model.get_submodule(module_name).state_dict().items():
                out[f"{module_name}.{key}"] = value.detach().clone()
        return out

    def set_adapter(self, name: str) -> None:
        """Make ``name`` the adapter in use and the one that trains; everything else is frozen."""
        if name not in self.peft_config:
            raise OmnituneError(f"no adapter {name!r} loaded (loaded: {', '.join(self.peft_config)})")
        previous = self.active_adapter
        if previous is not None and previous != name:
            self._saved_heads[previous] = self._head_state(previous)
        if name in self._saved_heads:
            self.base_model.load_state_dict(self._saved_heads.pop(name), strict=False)
        for p in self.base_model.parameters():
            p.requires_grad_(False)
        for site in self._sites():
            site.active = name if name in site.adapters else None
            if site.active is not None:
                site.adapters[name].requires_grad_(True)
        for module_name in self.peft_config[name]["modules_to_save"]:
            self.base_model.get_submodule(module_name).requires_grad_(True)
        self.active_adapter = name

    def _site_state(self, name: str) -> dict[str, torch.Tensor]:
        """One adapter's weights at every site, keyed ``{layer}.{down|up}.{weight|bias}``."""
        state = {}
        for site_name, module in self.base_model.named_modules():
            if isinstance(module, SiteAdapters) and name in module.adapters:
                layer = site_name[: -len(CHILD) - 1]
                for key, value in module.adapters[name].state_dict().items():
                    state[f"{layer}.{key}"] = value.detach().cpu().contiguous()
        return state

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        """What is saved for one adapter: its weights at each site and its modules_to_save."""
        state = self._site_state(name)
        head = self._head_state(name) if name == self.active_adapter else self._saved_heads.get(name, {})
        state.update({k: v.cpu().contiguous() for k, v in head.items()})
        return state

    def save_pretrained(self, out_dir: str | Path) -> None:
        from safetensors.torch import save_file

        for name, config in self.peft_config.items():
            where = Path(out_dir) if name == "default" else Path(out_dir) / name
            where.mkdir(parents=True, exist_ok=True)
            save_file(self.adapter_state(name), str(where / WEIGHTS_FILE))
            (where / CONFIG_FILE).write_text(json.dumps(config, indent=1))

    def load_adapter(self, folder: str | Path, adapter_name: str) -> None:
        """Add the adapter saved in ``folder`` under ``adapter_name`` (the active one stays active)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config = json.loads((folder / CONFIG_FILE).read_text())
        if config.get("peft_type") != PEFT_TYPE:
            raise OmnituneError(f"{folder / CONFIG_FILE}: not a bottleneck adapter (peft_type "
                                f"{config.get('peft_type')!r})")
        self.add_adapter(adapter_name, config)
        state = load_file(str(folder / WEIGHTS_FILE))
        head_prefixes = tuple(m + "." for m in config.get("modules_to_save") or [])
        head = {k: v for k, v in state.items() if k.startswith(head_prefixes)}
        adapters = {k: v for k, v in state.items() if k not in head}
        expected, expected_head = set(self._site_state(adapter_name)), set(self._head_state(adapter_name))
        if set(adapters) != expected or set(head) != expected_head:
            missing = sorted(expected - set(adapters))[:3]
            raise OmnituneError(f"{folder / WEIGHTS_FILE}: does not fit this base model (missing {missing}, "
                                f"unexpected {sorted(set(adapters) - expected)[:3]})")
        for key, value in adapters.items():  # "{layer}.{down|up}.{weight|bias}"
            layer, part, param = key.rsplit(".", 2)
            bottleneck = getattr(self.base_model.get_submodule(layer), CHILD).adapters[adapter_name]
            getattr(bottleneck, part).get_parameter(param).data.copy_(value)
        self._saved_heads[adapter_name] = head  # put in place when the adapter is made active

    @classmethod
    def from_pretrained(cls, model: nn.Module, folder: str | Path, adapter_name: str = "default") -> "BottleneckModel":
        wrapped = cls(model)
        wrapped.load_adapter(folder, adapter_name)
        wrapped.set_adapter(adapter_name)
        return wrapped

    def merge_and_unload(self, adapter_names: list[str] | None = None) -> nn.Module:
        raise OmnituneError("bottleneck adapters add layers to the network: there are no base weights to fold "
                            "them into. Use the adapter as saved (evaluate/predict --adapter NAME), or train "
                            "LoRA or IA3 (finetune.peft.method) where a merged plain model is needed")
