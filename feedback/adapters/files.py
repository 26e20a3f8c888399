"""The adapter folder format: written and verified here, with neither torch nor the database.

An adapter folder holds what PEFT's ``save_pretrained`` wrote (safetensors
only, never pickle) plus the files the registry adds: ``training_config.json``,
``metrics.json``, ``gate.json``, ``manifest.json`` (version and base model) and
``checksums.json`` (the sha256 of every other file). The registry row holds the
sha256 of ``checksums.json``, so one digest vouches for the whole folder.

:func:`stage` writes such a folder (every file fsynced) and
:func:`verify_adapter_dir` checks one. The registry (before it registers or
promotes an adapter) and the serving process (before it loads one) both call
the latter, so a bad checksum, a truncated file or an adapter for another base
model is refused the same way everywhere.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import math
import os
import struct
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feedback.durable import fsync_dir
from feedback.exceptions import InvalidInputError, TunebackError

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
MANIFEST, CHECKSUMS = "manifest.json", "checksums.json"
# What the registry writes beside PEFT's files; a source folder may not hold these.
GENERATED = ("training_config.json", "metrics.json", "gate.json", MANIFEST, CHECKSUMS)
# Formats that unpickle on load, and so could run code: refused everywhere.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2,
    "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip


class CorruptAdapterError(TunebackError, ValueError):
    """An adapter folder that must not be loaded: missing, altered, truncated or mismatched."""

    code, status = "corrupt_adapter", 422


class UnsafeAdapterFileError(CorruptAdapterError):
    """A pickle-based file (``.bin``, ``.pt``, ``.pkl`` ...): loading it could run code."""

    code = "unsafe_adapter_file"


def verify_adapter_dir(
    path: Path | str,
    *,
    expected_checksum: str | None = None,
    expected_base_model: str | None = None,
    expected_version: str | None = None,
) -> None:
    """Raise :class:`CorruptAdapterError` unless ``path`` is an intact adapter folder.

    Checks, in order: the folder and its required files exist; no pickle files;
    the file set matches ``checksums.json`` (whose sha256 must equal
    ``expected_checksum`` when given); every safetensors file is complete; every
    file's sha256 matches; manifest and adapter config name the expected base
    model and version when given; the LoRA weights have the rank the config says.
    """
    path = Path(path)
    if not path.is_dir():
        raise CorruptAdapterError(f"adapter folder {path} does not exist")
    files = list_files(path)
    refuse_pickles(files, path)
    for required in (WEIGHTS_FILE, CONFIG_FILE, MANIFEST, CHECKSUMS):
        if required not in files:
            raise CorruptAdapterError(f"{path}: {required} is missing")
    listed = _read_checksums(path, expected_checksum)
    unlisted = sorted(set(files) - set(listed) - {CHECKSUMS})
    missing = sorted(set(listed) - set(files))
    if unlisted or missing:
        raise CorruptAdapterError(
            f"{path}: files differ from checksums.json (missing: {missing}, unexpected: {unlisted})"
        )
    for name in files:
        if name.endswith(".safetensors"):
            check_safetensors(path / name)
    for name, digest in sorted(listed.items()):
        if sha256_file(path / name) != digest:
            raise CorruptAdapterError(f"{path}: checksum mismatch for {name}")
    _check_identity(path, expected_base_model, expected_version)
    check_lora_ranks(path)


def check_safetensors(file: Path) -> dict[str, Any]:
    """Raise :class:`CorruptAdapterError` unless ``file`` is a complete safetensors file.

    Reads only the header (8-byte length, then JSON) and checks that every
    tensor's byte range lies in the file and that the ranges cover the data
    exactly, which is what a truncated or padded file gets wrong. Returns the header.
    """
    header, data_bytes = _read_safetensors_header(file)
    end_max, tensors = 0, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = _tensor_range(file, name, entry)
        if end > data_bytes:
            raise CorruptAdapterError(
                f"{file} is truncated: tensor {name} ends at byte {end} of the data, "
                f"but the file holds {data_bytes}"
            )
        end_max, tensors = max(end_max, end), tensors + 1
    if tensors == 0:
        raise CorruptAdapterError(f"{file} holds no tensors")
    if end_max != data_bytes:
        raise CorruptAdapterError(
            f"{file}: the header accounts for {end_max} data bytes, the file holds {data_bytes}"
        )
    return header


def check_lora_ranks(path: Path) -> None:
    """Raise :class:`CorruptAdapterError` if a LoRA A or B weight's rank is not the
    ``r`` of ``adapter_config.json``: such an adapter would be scaled wrongly, or
    not load at all. Reads headers only; an adapter with a ``rank_pattern`` (ranks
    per module) or no integer ``r`` is left to the loader's own shape checks."""
    config = read_json_object(path / CONFIG_FILE)
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or config.get("rank_pattern"):
        return
    header, _ = _read_safetensors_header(path / WEIGHTS_FILE)
    for name, entry in header.items():
        axis = {".lora_A.weight": 0, ".lora_B.weight": 1}.get(name[-14:])
        if axis is None or not isinstance(entry, dict):
            continue
        shape = entry.get("shape")
        if not isinstance(shape, list) or len(shape) != 2 or shape[axis] != rank:
            raise CorruptAdapterError(
                f"{path}: {name} has shape {shape}, but adapter_config.json says rank r={rank}"
            )


def sha256_file(file: Path) -> str:
    digest = hashlib.sha256()
    for chunk in chunks(file):
        digest.update(chunk)
    return digest.hexdigest()


def read_json_object(file: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; anything else is a :class:`CorruptAdapterError`."""
    try:
        data = json.loads(file.read_bytes())
    except (OSError, ValueError):
        raise CorruptAdapterError(f"{file} is missing or not valid JSON") from None
    if not isinstance(data, dict):
        raise CorruptAdapterError(f"{file} is not a JSON object")
    return data


def list_files(folder: Path) -> builtins.list[str]:
    """Every regular file under ``folder``, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def refuse_pickles(files: builtins.list[str], folder: Path) -> None:
    unsafe = [name for name in files if name.lower().endswith(PICKLE_SUFFIXES)]
    if unsafe:
        raise UnsafeAdapterFileError(
            f"{folder}: pickle-based files are refused, save adapters as safetensors: {unsafe}"
        )


def chunks(file: Path) -> Iterator[bytes]:
    with open(file, "rb") as stream:
        while chunk := stream.read(1 << 20):
            yield chunk


def check_fits_base(path: Path, base_folder: Path | str) -> None:
    """Raise :class:`CorruptAdapterError` unless every LoRA weight in ``path`` fits a
    linear layer of the base model in ``base_folder``: the layer exists, A is
    ``(r, in)`` and B is ``(out, r)``. Reads safetensors headers only, so the
    command line can refuse an adapter for another model without loading either.
    Does nothing when ``base_folder`` holds no safetensors files (nothing to compare).
    """
    shapes: dict[str, Any] = {}
    for file in sorted(Path(base_folder).glob("*.safetensors")):
        shapes.update(_read_safetensors_header(file)[0])
    if not shapes:
        return
    header, _ = _read_safetensors_header(path / WEIGHTS_FILE)
    for name, entry in header.items():
        stem, _, part = name.removeprefix("base_model.model.").rpartition(".lora_")
        if part not in ("A.weight", "B.weight") or not isinstance(entry, dict):
            continue
        layer = (shapes.get(f"{stem}.weight") or {}).get("shape")
        if not isinstance(layer, list) or len(layer) != 2:
            raise CorruptAdapterError(
                f"{path}: {name} adapts {stem!r}, which is not a linear layer of {base_folder}"
            )
        shape, (out_features, in_features) = entry.get("shape"), layer
        fits = (
            isinstance(shape, list)
            and len(shape) == 2
            and (shape[1] == in_features if part == "A.weight" else shape[0] == out_features)
        )
        if not fits:
            raise CorruptAdapterError(
                f"{path}: {name} has shape {shape}, which does not fit the base model's "
                f"{in_features}->{out_features} layer {stem}"
            )


# --- writing -------------------------------------------------------------------


def source_files(source_dir: Path) -> builtins.list[str]:
    """The files to copy from a PEFT output folder, after refusing what must not go in."""
    if not source_dir.is_dir():
        raise InvalidInputError(f"adapter source {source_dir} is not a folder")
    files = list_files(source_dir)
    refuse_pickles(files, source_dir)
    clashes = sorted(set(files) & set(GENERATED))
    if clashes:
        raise InvalidInputError(f"{source_dir}: {clashes} would be overwritten by the registry")
    for required in (WEIGHTS_FILE, CONFIG_FILE):
        if required not in files:
            raise CorruptAdapterError(f"{source_dir}: {required} is missing")
    return files


def generated_files(
    *, version: str, base_model: str, config: Any, metrics: Any, gate: Any, **lineage: Any
) -> dict[str, Any]:
    """The JSON files the registry writes next to the adapter: name -> content."""
    manifest = {"version": version, "base_model": base_model, **lineage}
    return {
        "training_config.json": config or {},
        "metrics.json": metrics or {},
        "gate.json": gate or {},
        MANIFEST: {**manifest, "created_at": datetime.now(UTC).isoformat()},
    }


def stage(source: Path, files: builtins.list[str], staging: Path, extra: dict[str, Any]) -> str:
    """Copy ``files`` and write ``extra`` (name -> JSON data) and checksums.json into
    the new folder ``staging``, all fsynced; return the sha256 of checksums.json."""
    staging.mkdir()
    digests = {}
    for name in files:
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        digests[name] = write_durably(staging / name, chunks(source / name))
    for name, data in extra.items():
        digests[name] = write_durably(staging / name, [json_bytes(data)])
    checksums = checksums_bytes(digests)
    write_durably(staging / CHECKSUMS, [checksums])
    for folder in sorted({(staging / name).parent for name in digests}, reverse=True):
        fsync_dir(folder)
    return hashlib.sha256(checksums).hexdigest()


def checksums_bytes(digests: dict[str, str]) -> bytes:
    """``checksums.json``: the sha256 of every other file of the folder, by name."""
    return json_bytes({"algorithm": "sha256", "files": digests})


def parse_checksums(data: bytes) -> dict[str, str] | None:
    """The digests a ``checksums.json`` lists; None when it is unreadable."""
    try:
        files = json.loads(data).get("files")
    except (ValueError, AttributeError):
        return None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        return None
    return files


def write_durably(target: Path, data: Iterable[bytes]) -> str:
    """Write ``data`` to a new file and fsync it; return its sha256."""
    digest = hashlib.sha256()
    with open(target, "xb") as stream:
        for chunk in data:
            digest.update(chunk)
            stream.write(chunk)
        stream.flush()
        os.fsync(stream.fileno())
    return digest.hexdigest()


def json_bytes(data: Any) -> bytes:
    return json.dumps(
        json_safe(data), indent=2, sort_keys=True, allow_nan=False, default=str
    ).encode()


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None.

    PostgreSQL's JSON types reject NaN, and a failed evaluation's metrics must
    still be storable; the gate's reasons say what the missing numbers were.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# --- helpers -------------------------------------------------------------------


def _read_safetensors_header(file: Path) -> tuple[dict[str, Any], int]:
    size = file.stat().st_size
    with open(file, "rb") as stream:
        head = stream.read(8)
        if len(head) < 8:
            raise CorruptAdapterError(f"{file} is truncated: {size} bytes, no header")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES:
            raise CorruptAdapterError(f"{file}: implausible header length {length}")
        if 8 + length > size:
            raise CorruptAdapterError(
                f"{file} is truncated: the header needs {length} bytes, the file has {size - 8}"
            )
        raw = stream.read(length)
    try:
        header = json.loads(raw)
    except ValueError as error:  # UnicodeDecodeError is a ValueError too
        raise CorruptAdapterError(f"{file}: the header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise CorruptAdapterError(f"{file}: the header is not a JSON object")
    return header, size - 8 - length


def _tensor_range(file: Path, name: str, entry: Any) -> tuple[int, int]:
    try:
        begin, end = (int(x) for x in entry["data_offsets"])
        shape = [int(n) for n in entry["shape"]]
        dtype = str(entry["dtype"])
    except (TypeError, KeyError, ValueError):
        raise CorruptAdapterError(f"{file}: malformed header entry for tensor {name}") from None
    if not 0 <= begin <= end:
        raise CorruptAdapterError(f"{file}: tensor {name} has offsets {begin}..{end}")
    width = DTYPE_BYTES.get(dtype)
    if width is not None and math.prod(shape) * width != end - begin:
        raise CorruptAdapterError(
            f"{file}: tensor {name} ({dtype} {shape}) should take "
            f"{math.prod(shape) * width} bytes, its offsets give {end - begin}"
        )
    return begin, end


def _read_checksums(path: Path, expected_checksum: str | None) -> dict[str, str]:
    if expected_checksum is not None and sha256_file(path / CHECKSUMS) != expected_checksum:
        raise CorruptAdapterError(f"{path}: checksums.json does not match the registered checksum")
    try:
        files = parse_checksums((path / CHECKSUMS).read_bytes())
    except OSError:
        files = None
    if files is None:
        raise CorruptAdapterError(f"{path}: checksums.json is unreadable")
    return files


def _check_identity(path: Path, base_model: str | None, version: str | None) -> None:
    manifest, config = read_json_object(path / MANIFEST), read_json_object(path / CONFIG_FILE)
    if version is not None and manifest.get("version") != version:
        raise CorruptAdapterError(
            f"{path}: the manifest names version {manifest.get('version')!r}, not {version!r}"
        )
    if base_model is None:
        return
    for source, found in (
        ("manifest", manifest.get("base_model")),
        (CONFIG_FILE, config.get("base_model_name_or_path", base_model)),
    ):
        if found != base_model:
            raise CorruptAdapterError(
                f"{path}: trained for base model {found!r} ({source}), not {base_model!r}"
            )
