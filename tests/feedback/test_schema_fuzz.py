"""Schemathesis fuzzes every operation in /openapi.json against a live server:
no 5xx, and every response matches the spec (status, content type, headers, body)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.live import LiveServer, create_key, tuneback_env

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance"
)


def test_schemathesis_finds_no_server_error_or_spec_violation(tmp_path, database_url):
    env = tuneback_env(tmp_path / "data", database_url, rate_limit="1000000/minute")
    admin = create_key(env, "--role", "admin")
    with LiveServer(env) as server:
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                f"{server.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {admin}",
                "--checks",
                CHECKS,
                "--max-examples",
                "40",
                "--seed",
                "20261127",
                "--report-dir",
                str(tmp_path / "report"),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    assert run.returncode == 0, run.stdout[-6000:]
    assert "generated" in run.stdout and "failed" not in run.stdout.split("SUMMARY")[-1]
