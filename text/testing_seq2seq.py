"""Tiny seq2seq fixtures, built from configs: nothing is downloaded.

- a tiny Marian (the opus-mt architecture) with a small BPE tokenizer trained on the committed
  DDTP sample (real English-German package descriptions, see text/ddtp.py);
- a tiny BERT-to-BERT ``EncoderDecoderModel`` warm start (both halves from one tiny BERT folder,
  cross-attention random), as the MiniLM-to-MiniLM recipe builds;
- the tiny Llama of text/testing.py for the decoder-only (prompt template) path.

Each backs ``Seq2SeqFixture`` (``omnitune.fixtures``: the contract tests and the tiny run of every shipped recipe).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .ddtp import SAMPLE
from .testing import FILLER, NEGATIVE, POSITIVE, build_once, make_tiny_llama, make_tokenizer_and_model, write_csv

MARIAN_SPECIALS = ["<pad>", "</s>", "<unk>"]


def ddtp_pairs() -> list[dict]:
    """The committed sample of 60 real DDTP en-de pairs (short package descriptions)."""
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]


def make_tiny_marian(folder: Path, texts: list[str] | None = None, vocab_size: int = 400) -> Path:
    """A BPE tokenizer (shared en/de vocabulary, ``</s>`` appended like Marian's) trained on
    ``texts`` (default: the DDTP sample), and a random 2+2-layer Marian, saved as a HF folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    if texts is None:
        texts = [t for p in ddtp_pairs() for t in (p["en"], p["de"])]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=MARIAN_SPECIALS,
                                                       show_progress=False))
    tok.post_processor = TemplateProcessing(single="$A </s>", pair="$A $B </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    config = MarianConfig(vocab_size=tok.get_vocab_size(), d_model=32, encoder_layers=2, decoder_layers=2,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=0, eos_token_id=1,
                          decoder_start_token_id=0, forced_eos_token_id=1, dropout=0.0)
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    MarianMTModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def make_summaries(n: int = 160, seed: int = 0) -> list[dict]:
    """"Articles" of filler words around one sentiment word; the "summary" is that word, said
    twice for positive articles: targets of different lengths, learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        word = rng.choice(POSITIVE if i % 2 == 0 else NEGATIVE)
        words = rng.sample(FILLER, rng.randint(3, 8)) + [word]
        rng.shuffle(words)
        rows.append({"document": " ".join(words), "summary": word if i % 2 else f"{word} {word}"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_seq2seq_recipe(folder: Path, like=None) -> dict:
    """seq2seq: like a decoder-only recipe, a tiny Llama with a prompt template; like a warm-started
    encoder-decoder recipe, a tiny BERT-to-BERT; otherwise a tiny Marian on the DDTP sample
    (translation). Every model/data field a shipped seq2seq recipe may set is given here."""
    folder = Path(folder)
    generation = {"max_new_tokens": 8, "num_beams": 1, "eval_samples": 8}
    if like is not None:  # keep the recipe's decoding (beams, penalties), only shorter
        generation = {**like.model.generation.model_dump(), **generation, "num_beams": like.model.generation.num_beams}
    kind = "translation"
    data = {"source": None, "validation_source": None, "test_source": None, "kind": kind,
            "source_column": "en", "target_column": "de", "source_prefix": "", "prompt_template": None}
    model = {"decoder": None, "max_source_length": 48, "max_target_length": 32, "generation": generation}
    if like is not None and like.data.prompt_template is not None:  # a decoder-only recipe
        model["name"] = str(build_once(folder / "tiny-llama", make_tiny_llama))
        data.update(source=str(build_once(folder / "summaries.jsonl", lambda p: write_jsonl(p, make_summaries()))),
                    kind="summarization", source_column="document", target_column="summary",
                    prompt_template="review: {source} answer:")
    elif like is not None and like.model.decoder:
        bert = str(build_once(folder / "tiny-bert", make_tokenizer_and_model))
        model.update(name=bert, decoder=bert)
        data.update(source=str(build_once(folder / "summaries.jsonl", lambda p: write_jsonl(p, make_summaries()))),
                    kind="summarization", source_column="document", target_column="summary")
    else:
        model["name"] = str(build_once(folder / "tiny-marian", make_tiny_marian))
        data["source"] = str(build_once(folder / "ddtp.jsonl", lambda p: write_jsonl(p, ddtp_pairs())))
    return {
        "name": "tiny-seq2seq", "task": "seq2seq", "seed": 0, "model": model, "data": data,
        "train": {"epochs": 1, "batch_size": 8, "lr": 3e-3, "precision": "fp32"},
        "output": {"dir": str(folder / "runs")},
    }


class Seq2SeqFixture:
    """seq2seq's fixture (entry point in ``omnitune.fixtures``)."""

    @staticmethod
    def tiny_recipe(folder: Path, like=None) -> dict:
        return tiny_seq2seq_recipe(folder, like)

    @staticmethod
    def tiny_inputs(folder: Path) -> list[str]:
        return ["Dutch dictionary for Aspell", "the film was good"]


__all__ = ["Seq2SeqFixture", "ddtp_pairs", "make_tiny_marian", "make_summaries", "tiny_seq2seq_recipe",
           "write_csv"]
