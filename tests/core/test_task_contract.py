"""The task contract, checked for every registered task (timm's test_models.py style).

Each task builds a tiny model and tiny data from its fixture (``omnitune.fixtures``), and
the same checks run on all of them: the layer groups cover every parameter once; forward and
backward run; each strategy (full, partial, feature extraction, gradual, LoRA) trains exactly the
parameters it should; save and reload give the same outputs; ``predict`` works on raw inputs; and
the model does not depend on whether build_model or build_datasets ran first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omnitune.core.adapters import peft as peft_lib
from omnitune.core.api import build_peft_model, build_task, load_adapter_model, seed_everything
from omnitune.core.base.recipe import validate_recipe
from omnitune.core.loop.strategies import apply_strategy

from ..fixtures import task_params, tiny_inputs, tiny_recipe


class Tiny:
    """One task's tiny recipe, task, datasets and a batch, built once per task."""

    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.folder = folder
        self.raw = tiny_recipe(name, folder)
        self.raw["output"] = {"dir": str(folder / "runs")}
        self.recipe = validate_recipe(self.raw, where=f"{name}.tiny_recipe()")
        self.task = build_task(self.recipe)
        self.bundle = self.task.build_datasets()
        self.batch = self._batch(self.bundle.train)
        self.eval_batch = self._batch(self.bundle.validation)

    def _batch(self, dataset):
        return self.task.collate([dataset[i] for i in range(min(2, len(dataset)))])

    def model(self):
        seed_everything(self.recipe.seed)
        return self.task.build_model()


@pytest.fixture(scope="module", params=task_params())
def tiny(request, tmp_path_factory) -> Tiny:
    torch.set_num_threads(1)
    return Tiny(request.param, tmp_path_factory.mktemp(request.param))


def loss_of(out: dict) -> torch.Tensor:
    """The mean loss of a forward's output: the summed loss over the items it counts."""
    assert "outputs" in out
    if "loss_sum" in out:
        return out["loss_sum"] / max(1, int(out["num_items"]))
    return out["loss"]


def tensors(obj) -> list[torch.Tensor]:
    """Every tensor in a forward's outputs (a tensor, or dicts/lists/tuples/model outputs of them)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj) for t in tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in tensors(x)]
    if hasattr(obj, "to_tuple"):
        return tensors(obj.to_tuple())
    return []


def test_build_model_and_build_datasets_in_either_order(tiny):
    first = build_task(tiny.recipe)
    seed_everything(0)
    model_first = first.build_model()
    first.build_datasets()
    second = build_task(tiny.recipe)
    second.build_datasets()
    seed_everything(0)
    model_second = second.build_model()
    assert first.label_names == second.label_names
    shapes = lambda m: {n: tuple(p.shape) for n, p in m.named_parameters()}  # noqa: E731
    assert shapes(model_first) == shapes(model_second)


def test_layer_groups_cover_every_parameter_once(tiny):
    model = tiny.model()
    groups = tiny.task.layer_groups(model)
    assert len(groups) >= 3, "input group, at least one block, head"
    owners: dict[int, str] = {}
    for g in groups:
        for p in g.parameters():
            assert id(p) not in owners, f"a parameter is in groups {owners[id(p)]} and {g.name}"
            owners[id(p)] = g.name
    missing = [n for n, p in model.named_parameters() if id(p) not in owners]
    assert not missing, missing[:5]
    assert all(any(True for _ in g.parameters()) for g in groups[-1:]), "the head group owns parameters"


def test_forward_and_backward(tiny):
    model = tiny.model().train()
    out = tiny.task.forward(model, tiny.batch, train=True)
    loss = loss_of(out)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        model.eval()
        out = tiny.task.forward(model, tiny.eval_batch, train=False)
        preds, refs = tiny.task.predict_batch(model, tiny.eval_batch, out)
    # One prediction per dataset item in the batch (a QA item is a question with all its windows).
    assert len(preds) == len(refs) == min(2, len(tiny.bundle.validation))
    assert tiny.task.main_metric in tiny.task.compute_metrics(preds, refs)


def _step(tiny, model, norm_stats: bool = True) -> dict[str, torch.Tensor]:
    """One SGD step on the trainable parameters; returns the weights before it. ``norm_stats=False``
    keeps BatchNorm statistics as they are, as the trainer does for PEFT runs (an adapter-only save
    does not hold them)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train(norm_stats)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    loss_of(tiny.task.forward(model, tiny.batch, train=True)).backward()
    opt.step()
    return before


STRATEGIES = {  # strategy -> (apply_strategy arguments, the groups that must train)
    "full": ({}, lambda groups: groups),
    "partial": ({"freeze_layers": 1}, lambda groups: groups[1:]),
    "feature_extraction": ({}, lambda groups: groups[-1:]),
    "gradual": ({}, lambda groups: groups[-1:]),  # at the start: the head only
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_strategy_trains_exactly_its_groups(tiny, strategy):
    kwargs, training = STRATEGIES[strategy]
    model = tiny.model()
    groups = tiny.task.layer_groups(model)
    fixed = {id(p) for p in model.parameters() if not p.requires_grad}  # the model's own (e.g. sinusoidal)
    apply_strategy(model, groups, strategy=strategy, **kwargs)
    expected = {id(p) for g in training(groups) for p in g.parameters()} - fixed
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == expected, (sorted(names[i] for i in trainable ^ expected)[:5])
    before = _step(tiny, model)
    for name, p in model.named_parameters():
        if id(p) not in expected:
            assert torch.equal(p, before[name]), f"{strategy}: frozen {name} changed"
    for g in training(groups):
        ids = {id(p) for p in g.parameters()} - fixed
        if ids:
            assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if id(p) in ids), \
                f"{strategy}: nothing in group {g.name} changed"


def test_lora_trains_adapters_and_head_only(tiny):
    rec = validate_recipe({**tiny.raw, "finetune": {"peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0}}})
    model = tiny.model()
    wrapper = build_peft_model(rec, tiny.task, model)
    apply_strategy(model, tiny.task.layer_groups(model), strategy="full", adapters=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable)
    assert all("lora_" in n or "modules_to_save" in n for n in trainable), trainable[:5]
    before = _step(tiny, model, norm_stats=False)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all("lora_" in n or "modules_to_save" in n for n in changed), changed[:5]
    assert any("lora_B" in n for n in changed)
    # The adapter saves and reloads (without the training data) to the same outputs.
    out_dir = tiny.folder / "lora-saved"
    tiny.task.save_pretrained(wrapper, out_dir)
    fresh = build_task(rec)
    again = load_adapter_model(rec, fresh, out_dir)
    _same_outputs(tiny, peft_lib.task_model(wrapper), fresh, peft_lib.task_model(again))


def _same_outputs(tiny, model, other_task, other_model):
    model.eval()
    other_model.eval()
    with torch.no_grad():
        a = tensors(tiny.task.forward(model, tiny.eval_batch, train=False)["outputs"])
        b = tensors(other_task.forward(other_model, tiny.eval_batch, train=False)["outputs"])
    assert a and len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.allclose(x.float(), y.float(), atol=1e-5), (x.flatten()[:4], y.flatten()[:4])


def test_save_and_reload_give_the_same_outputs(tiny):
    model = tiny.model()
    _step(tiny, model)  # trained weights, not the ones the base would rebuild
    out_dir = tiny.folder / "saved"
    tiny.task.save_pretrained(model, out_dir)
    fresh = build_task(tiny.recipe)
    reloaded = fresh.load_pretrained(out_dir)
    assert fresh.label_names == tiny.task.label_names
    _same_outputs(tiny, model, fresh, reloaded)


def test_predict_on_raw_inputs(tiny):
    model = tiny.model().eval()
    inputs = tiny_inputs(tiny.name, tiny.folder)
    out = tiny.task.predict(model, inputs)
    assert len(out) == len(inputs) and all(isinstance(o, dict) and o.get("input") == i for o, i in zip(out, inputs))
    assert not any("error" in o for o in out), out


# ---- the contract as protocols: the required one, and optional capabilities whole or not at all
def _capabilities() -> list[type]:
    """Every optional protocol of core/base/task.py (found there, so a new one is checked too)."""
    from omnitune.core.base import task as contract

    return [p for p in vars(contract).values()
            if isinstance(p, type) and getattr(p, "_is_runtime_protocol", False) and p is not contract.Task]


def _members(proto: type) -> set[str]:
    return {n for n in (*vars(proto), *getattr(proto, "__annotations__", {})) if not n.startswith("_")}


def test_task_satisfies_the_contract_and_each_capability_it_starts(tiny):
    import inspect

    from omnitune.core.base.task import Task

    task = tiny.task
    missing = sorted(m for m in _members(Task) if not hasattr(task, m))
    assert isinstance(task, Task), f"{tiny.name}: misses {missing} of the Task protocol"
    capabilities = _capabilities()
    assert {"ReportsExtras", "InnerLoop", "FeatureCacheable", "HasObjective"} <= {p.__name__ for p in capabilities}
    for proto in capabilities:
        members = _members(proto)
        present = {m for m in members if getattr(task, m, None) is not None}
        if not present:
            continue
        assert present == members, (f"{tiny.name}: has {sorted(present)} of {proto.__name__} but not "
                                    f"{sorted(members - present)} (a capability is implemented whole)")
        assert isinstance(task, proto)
        for name in members:  # methods take what the protocol says, in its order
            spec = getattr(proto, name, None)
            if inspect.isfunction(spec):
                ours = list(inspect.signature(getattr(task, name)).parameters)
                theirs = list(inspect.signature(spec).parameters)[1:]  # without self
                assert ours[:len(theirs)] == theirs, f"{tiny.name}.{name}{tuple(ours)}: {proto.__name__} has {theirs}"
