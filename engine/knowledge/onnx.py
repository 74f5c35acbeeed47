"""A sentence-transformers model run by ONNX Runtime, for ``FRONTDESK_EMBEDDINGS=local``.

Through PyTorch, all-MiniLM-L6-v2 takes about 12 ms to embed one short query on this CPU (30
ms at p99), most of a hybrid search's 50 ms; ONNX Runtime gives the same vector (to 1e-6) in
about 4 ms. The model's transformer is exported to ONNX once per model folder (``torch.onnx``),
into the cache, and read from there afterwards; tokenizing, pooling and normalising stay as the
model's sentence-transformers configuration says. Only the common shape is exported (one
transformer, then mean pooling, then optionally a normalisation); any other model, or no
``onnxruntime`` or ``onnx`` installed, is run by sentence-transformers as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
BATCH = 32  # texts per run, shortest first, as sentence-transformers batches them


def onnx_cache_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "frontdesk" / "models" / "onnx"


class OnnxEncoder:
    """Embeds texts like ``SentenceTransformer.encode(texts, normalize_embeddings=True)``."""

    def __init__(self, session: Any, tokenizer: Any, max_length: int) -> None:
        self._session, self._tokenizer, self._max_length = session, tokenizer, max_length
        self._inputs = [i.name for i in session.get_inputs()]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = np.zeros((len(texts), 0), dtype=np.float32)
        for start in range(0, len(order), BATCH):
            part = order[start : start + BATCH]
            found = self._run([texts[i] for i in part])
            if not vectors.shape[1]:
                vectors = np.zeros((len(texts), found.shape[1]), dtype=np.float32)
            vectors[part] = found
        return vectors

    def _run(self, texts: list[str]) -> np.ndarray:
        batch = self._tokenizer(
            texts, padding=True, truncation=True, max_length=self._max_length, return_tensors="np"
        )
        feeds = {name: np.asarray(batch[name], dtype=np.int64) for name in self._inputs}
        hidden = self._session.run(None, feeds)[0]
        mask = np.asarray(batch["attention_mask"], dtype=np.float32)[..., None]
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.where(norms == 0, 1, norms)).astype(np.float32)


def onnx_encoder(st: Any, path: Path) -> OnnxEncoder | None:
    """The model ``st`` (loaded from ``path``) run by ONNX Runtime, exported first if it is not
    in the cache; None when that cannot be (then sentence-transformers runs it)."""
    try:
        import onnxruntime
    except ImportError:
        log.info("onnxruntime is not installed: embeddings run through PyTorch")
        return None
    if not _mean_pooled(st):
        log.info("embedding model %s is not transformer + mean pooling: run through PyTorch",
                 path.name)  # fmt: skip
        return None
    target = onnx_cache_dir() / f"{path.name}-{_fingerprint(path)}.onnx"
    if not target.is_file():
        try:
            _export(st, target)
        except Exception as exc:  # no onnx package, or a model the exporter cannot take
            log.warning("cannot export %s to ONNX, embeddings run through PyTorch: %r",
                        path.name, exc)  # fmt: skip
            return None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # its warnings about unused initializers are not ours
    # its threads sleep between runs rather than spin: the worker has other work for the cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
    return OnnxEncoder(session, st.tokenizer, int(st.max_seq_length))


def _mean_pooled(st: Any) -> bool:
    """One transformer, mean pooling, and at most a normalisation after it."""
    kinds = [type(module).__name__ for module in st]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return False
    pooling = st[1]
    if hasattr(pooling, "pooling_mode"):  # sentence-transformers 6
        return bool(pooling.pooling_mode == "mean")
    modes = [name for name, value in vars(pooling).items()  # 3 to 5: one flag per mode
             if name.startswith("pooling_mode_") and value is True]  # fmt: skip
    return modes == ["pooling_mode_mean_tokens"]


def _fingerprint(path: Path) -> str:
    """Names the export after the model's weights and configuration: a changed model folder
    is exported again."""
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.suffix in (".json", ".safetensors", ".bin", ".txt"):
            digest.update(str(file.relative_to(path)).encode())
            with file.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
    return digest.hexdigest()[:16]


def _export(st: Any, target: Path) -> None:
    import torch

    class Hidden(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            return self.model(**dict(zip(names, inputs, strict=True))).last_hidden_state

    model = st[0].auto_model.eval()
    sample = st.tokenizer(["an example sentence to trace"], return_tensors="pt")
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample]
    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("exporting the embedding model to ONNX, once: %s", target)
    # written beside the target and renamed into place, so that a worker starting meanwhile
    # never reads half a file
    with tempfile.TemporaryDirectory(dir=target.parent) as folder:
        part = Path(folder) / target.name
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on constants it keeps
            torch.onnx.export(
                Hidden(model).eval(), tuple(sample[name] for name in names), str(part),
                input_names=names, output_names=["hidden"],
                dynamic_axes={**axes, "hidden": {0: "batch", 1: "tokens"}},
                dynamo=False, opset_version=17,
            )  # fmt: skip
        os.replace(part, target)
