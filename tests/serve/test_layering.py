"""Serving learns about adapters from the store, never from the training code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_serve_never_imports_the_training_package_or_the_cli():
    pattern = re.compile(r"^\s*(from|import)\s+(retrain|tuneback)\b", re.M)
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "serve").rglob("*.py")
        if pattern.search(path.read_text())
    ]
    assert offenders == []


def test_importing_the_serving_app_loads_no_torch():
    code = (
        "import sys, serve.app, serve.chat, serve.proxy;"
        "bad = [m for m in ('torch', 'transformers', 'retrain') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
