"""Tiny chat fixtures, built from configs and generated data: nothing is downloaded.

A word-level tokenizer WITH a chat template (role markers and an end-of-turn token that is also
EOS, so generation stops at the end of a reply) and a random 2-layer Llama; conversations whose
reply (yes/no) hinges on one sentiment word of the user's review, so a tiny model learns them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .testing import FILLER, LLAMA_SPECIALS, NEGATIVE, POSITIVE, build_once

ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_WORDS = ["review:", ".", "positive", "?", "yes", "no", "answer", "or", "and", "hello"]
# Every turn is "<|role|> content <|end|> "; the generation prompt is "<|assistant|> ".
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|> ' + m['content'] + ' <|end|> ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)
SYSTEM = "answer yes or no"


def make_tiny_chat_llama(folder: Path) -> Path:
    """The tokenizer (chat template included) and a random tiny Llama (tied embeddings), saved as
    a Hugging Face folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = [*LLAMA_SPECIALS, *ROLE_TOKENS, *POSITIVE, *NEGATIVE, *FILLER, *CHAT_WORDS]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="<|end|>", additional_special_tokens=ROLE_TOKENS[:3])
    fast.chat_template = TINY_CHAT_TEMPLATE
    end = vocab.index("<|end|>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=2, eos_token_id=end,
                         # large enough that a LoRA on frozen tied embeddings can move the logits
                         # (see text/testing.py make_tiny_llama)
                         initializer_range=0.3)
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = end
    model.generation_config.pad_token_id = 0
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def review(rng: random.Random, positive: bool) -> str:
    words = rng.sample(FILLER, 3) + [rng.choice(POSITIVE if positive else NEGATIVE)]
    rng.shuffle(words)
    return "review: " + " ".join(words) + " . positive ?"


def make_conversations(n: int = 200, seed: int = 0) -> list[dict]:
    """``{"messages": [...]}`` rows: one or two review -> yes/no exchanges, a quarter with a system turn."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        turns = []
        if i % 4 == 1:
            turns.append({"role": "system", "content": SYSTEM})
        for k in range(2 if i % 4 == 2 else 1):
            pos = (i + k) % 2 == 0
            turns += [{"role": "user", "content": review(rng, pos)},
                      {"role": "assistant", "content": "yes" if pos else "no"}]
        rows.append({"messages": turns})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_chat_recipe(folder: Path) -> dict:
    """chat: the tiny chat Llama and 200 generated conversations."""
    folder = Path(folder)
    model = build_once(folder / "tiny-chat-llama", make_tiny_chat_llama)
    data = build_once(folder / "chats.jsonl", lambda p: write_jsonl(p, make_conversations(200)))
    return {
        "name": "tiny-chat", "task": "chat", "seed": 0,
        "model": {"name": str(model), "max_length": 48,
                  "generation": {"max_new_tokens": 3, "eval_samples": 4}},
        # Every data field a shipped chat recipe may set for its own data, so swapping this section
        # in leaves none of its columns, templates or answer parsing behind.
        "data": {"source": str(data), "validation_source": None, "test_source": None, "layout": "messages",
                 "messages_column": "messages", "prompt_template": "{instruction}", "response_template": "{output}",
                 "system_prompt": None, "chat_template": None, "answer_pattern": None,
                 "generation_metrics": ["exact_match"]},
        "train": {"epochs": 1, "batch_size": 16, "lr": 1e-2, "precision": "fp32"},
        "output": {"dir": str(folder / "runs")},
    }


class ChatFixture:
    """chat's fixture (entry point in ``omnitune.fixtures``)."""

    @staticmethod
    def tiny_recipe(folder: Path, like=None) -> dict:
        return tiny_chat_recipe(folder)

    @staticmethod
    def tiny_inputs(folder: Path) -> list[str]:
        return ["review: the film was good . positive ?"]
