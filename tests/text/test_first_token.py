"""The classifier's last layer computing position 0 only gives the full model's logits and gradients."""

import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                          DistilBertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification)

from omnitune.text.first_token import FIRST_TOKEN_CLASSIFIERS, first_token_only


def _model(kind: str, attn: str):
    torch.manual_seed(0)
    common = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  num_labels=3, attn_implementation=attn)
    if kind == "bert":
        return BertForSequenceClassification(BertConfig(**common))
    return RobertaForSequenceClassification(RobertaConfig(**common, pad_token_id=1, max_position_embeddings=40))


def _batch():
    ids = torch.randint(3, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # padded rows: the first query must still ignore the padding
    mask[2, 2:] = 0
    ids[mask == 0] = 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_same_logits_and_gradients(kind, attn):
    model = _model(kind, attn).eval()  # eval: no dropout, so both passes are deterministic
    batch = _batch()
    full = model(**batch).logits
    full.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    with first_token_only(model) as patched:
        assert patched
        fast = model(**batch).logits
        assert model.base_model(**batch).last_hidden_state.shape[1] == 1  # really only one position
    fast.sum().backward()
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # restored afterwards: the full sequence again
    assert model.base_model(**batch).last_hidden_state.shape[1] == 9


def test_unknown_architectures_run_unchanged():
    model = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4,
                                                                 hidden_dim=64)).eval()
    with first_token_only(model) as patched:
        assert not patched
    assert "distilbert" not in FIRST_TOKEN_CLASSIFIERS


def test_training_mode_runs_with_dropout():
    model = _model("bert", "sdpa").train()
    with first_token_only(model):
        loss = model(**_batch(), labels=torch.tensor([0, 1, 2])).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.bert.encoder.layer[-1].attention.self.query.weight.grad.abs().sum() > 0


def test_lora_model_is_patched_and_equal():
    from peft import LoraConfig, get_peft_model

    model = _model("bert", "sdpa")
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights=False)).eval()
    batch = _batch()
    full = peft(**batch).logits
    with first_token_only(peft) as patched:
        fast = peft(**batch).logits
    assert patched
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
