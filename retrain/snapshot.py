"""Write a dataset snapshot: OpenAI chat JSONL files plus a manifest.

``tuneback dataset build --out DIR`` and every retrain cycle use this; each
file is written crash-safely, the manifest (with each file's sha256) last.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from feedback.durable import fsync_dir, write_atomic
from feedback.exceptions import TunebackError
from retrain.dataset import FORMAT, Dataset, Example

MANIFEST = "manifest.json"


class SnapshotDirError(TunebackError, ValueError):
    """The snapshot folder holds files that a dataset snapshot did not write."""

    code, status = "snapshot_dir_not_ours", 409


def write_snapshot(dataset: Dataset, out_dir: Path, *, lane: str | None = None) -> Path:
    """Write ``train.jsonl``, ``heldout.jsonl``, ``preferences.jsonl`` and the manifest.

    The chat files hold SFT and positive examples in the OpenAI fine-tuning
    format; ``weight`` appears only where it is not 1. Each file is written to
    a temporary file, fsynced and renamed into place, the manifest (with each
    file's sha256) last; the manifest names the ``lane`` whose feedback it holds.
    Refuses a non-empty folder that holds no manifest of ours, so a wrong
    ``--out`` cannot clobber anything. Returns the folder.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = {
        "train.jsonl": [_chat_line(e) for e in dataset.train("sft", "positive")],
        "heldout.jsonl": [_chat_line(e) for e in dataset.heldout("sft", "positive")],
        "preferences.jsonl": [
            {"prompt": e.prompt, "chosen": e.completion, "rejected": e.rejected, "split": e.split}
            for e in dataset.examples
            if e.kind == "preference"
        ],
    }
    files = {}
    for name, records in lines.items():
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
        write_atomic(out_dir / name, data)
        files[name] = {"lines": len(records), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {**dataset.manifest, "files": files} | ({"lane": lane} if lane else {})
    write_atomic(
        out_dir / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    )
    fsync_dir(out_dir)
    return out_dir


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise SnapshotDirError(f"{out_dir} exists and is not a folder")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    try:
        ours = json.loads((out_dir / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise SnapshotDirError(f"{out_dir} is not empty and holds no dataset snapshot")


def _chat_line(example: Example) -> dict[str, Any]:
    messages = [*example.prompt, {"role": "assistant", "content": example.completion}]
    return {"messages": messages} | ({"weight": example.weight} if example.weight != 1 else {})
