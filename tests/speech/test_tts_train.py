"""VITS training pieces on hand-made cases, and a tiny VITS (built from a config) trained through
the core: its loss falls, and a run with alternating discriminator/generator optimisers killed
with SIGKILL resumes to exactly the weights of an uninterrupted run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ..resume_check import full_and_killed_runs_agree


def test_monotonic_alignment_hand_case():
    from omnitune.speech.vits_losses import monotonic_alignment

    # 5 frames x 3 tokens. Monotonic paths from (0,0) to (4,2): the best is tokens 0,1,1,2,2
    # (5+1+9+3+1 = 19; 0,0,1,2,2 gives 18). Frame 1 -> token 2 (score 9) would skip token 1.
    scores = torch.tensor([[[5., 0., 0.], [0., 1., 9.], [0., 9., 0.], [0., 0., 3.], [0., 0., 1.]]])
    path = monotonic_alignment(scores, torch.ones_like(scores))
    assert path[0].argmax(1).tolist() == [0, 1, 1, 2, 2]
    assert path.sum().item() == 5


def test_monotonic_alignment_respects_each_items_lengths():
    from omnitune.speech.vits_losses import monotonic_alignment

    scores = torch.zeros(2, 4, 3)
    scores[1, :, 0] = 10.0  # item 1 would stay on token 0, but it must reach its last token (1)
    mask = torch.ones(2, 4, 3)
    mask[1, 3, :] = 0  # item 1: 3 frames
    mask[1, :, 2] = 0  # and 2 tokens
    path = monotonic_alignment(scores, mask)
    assert path[1, :3, :2].argmax(1).tolist() == [0, 0, 1]
    assert path[1, 3].sum() == 0 and path[1, :, 2].sum() == 0
    assert path[0].sum(1).tolist() == [1, 1, 1, 1] and path[0, 3, 2] == 1 and path[0, 0, 0] == 1


def test_alignment_scores_are_gaussian_log_likelihoods():
    from omnitune.speech.vits_losses import alignment_scores

    torch.manual_seed(0)
    z, m, logs = torch.randn(1, 3, 4), torch.randn(1, 3, 2), 0.3 * torch.randn(1, 3, 2)
    got = alignment_scores(z, m, logs)
    for t in range(4):
        for x in range(2):
            want = sum(-0.5 * math.log(2 * math.pi) - logs[0, c, x] - 0.5 * ((z[0, c, t] - m[0, c, x]) / logs[0, c, x].exp()) ** 2
                       for c in range(3))
            assert got[0, t, x].item() == pytest.approx(float(want), abs=1e-5)


def _tiny_task(folder: Path, **model):
    from omnitune.core.api import build_task
    from omnitune.core.base.recipe import validate_recipe
    from omnitune.speech.testing_tts import tiny_tts_recipe

    raw = tiny_tts_recipe(folder)
    raw["model"].update(model)
    return build_task(validate_recipe(raw))


def test_tiny_vits_loss_falls(tmp_path):
    task = _tiny_task(tmp_path, discriminator_width=0)
    bundle = task.build_datasets()
    torch.manual_seed(0)
    model = task.build_model()
    batch = task.collate([bundle.train[i] for i in range(4)])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        out = task.forward(model, batch, train=True)
        loss = out["loss_sum"] / out["num_items"]
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses


def test_generator_and_discriminator_parts_split_every_parameter(tmp_path):
    task = _tiny_task(tmp_path)
    model = task.build_model()
    parts = task.optimizer_parts(model)
    assert list(parts) == ["discriminator", "generator"]
    ids = [id(p) for ps in parts.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in parts["discriminator"]} == {id(p) for p in model.discriminator.parameters()}


def test_alternating_optimisers_resume_in_process(tmp_path):
    """Stopped after step 3 (what SIGTERM does) and resumed: the same weights as a full run."""
    from safetensors.torch import load_file

    from omnitune.core.api import train
    from omnitune.core.base.recipe import validate_recipe
    from omnitune.core.loop.trainer import Interrupted
    from omnitune.speech.testing_tts import tiny_tts_recipe

    raw = tiny_tts_recipe(tmp_path / "fixture")
    raw["train"].update({"epochs": 2, "max_steps": 6, "eval_every": 3})
    rec = validate_recipe(raw)
    full = train(rec, {"output.run_name": "full"})

    def stop_at_3(trainer):
        if trainer.state.step == 3:
            trainer.request_stop()

    with pytest.raises(Interrupted):
        train(rec, {"output.run_name": "stopped"}, callbacks=[stop_at_3])
    resumed = train(rec, resume=full.run_dir.parent / "stopped")
    a = load_file(str(full.run_dir / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(resumed.run_dir / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("discriminator.") for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0, msg=k)
    assert resumed.metrics["validation"]["mel_l1"] == pytest.approx(full.metrics["validation"]["mel_l1"], abs=1e-6)


@pytest.mark.slow
def test_alternating_optimisers_resume_exactly(tmp_path):
    from omnitune.core.loop.checkpoint import read_state
    from omnitune.speech.testing_tts import tiny_tts_recipe

    recipe = tiny_tts_recipe(tmp_path / "fixture")
    recipe["train"].update({"epochs": 2, "batch_size": 2, "log_every": 1, "threads": 1})
    full_and_killed_runs_agree(recipe, tmp_path / "runs", kill_at=3)  # 4 steps per epoch
    extra = read_state(tmp_path / "runs" / "killed" / "checkpoints" / "last")
    assert set(extra["optimizer"]) == set(extra["schedule"]) == {"discriminator", "generator"}
    assert extra["optimizer"]["discriminator"]["state"] and extra["optimizer"]["generator"]["state"]
