"""Several processes migrating one fresh database at once: a server and a
scheduler started together on SQLite, or pods running their prestart step.

Without the migration lock each process saw an empty schema and created it
too ("table api_key already exists", "database is locked").
"""

from __future__ import annotations

import subprocess
from contextlib import nullcontext

import pytest
from sqlalchemy import inspect

from feedback import db
from tests.conftest import fresh_pg_database
from tests.live import BIN, tuneback_env

MIGRATORS = 4


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrators_started_together_all_succeed_and_migrate_once(tmp_path, backend):
    database = (
        nullcontext(f"sqlite:///{tmp_path / 'fresh.db'}")
        if backend == "sqlite"
        else fresh_pg_database("tuneback_migrate")
    )
    with database as url:
        env = tuneback_env(tmp_path / "data", url)
        command = [str(BIN), "db", "upgrade"]
        procs = [
            subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
            for _ in range(MIGRATORS)
        ]
        errors = [proc.communicate(timeout=120)[1] for proc in procs]
        assert [proc.returncode for proc in procs] == [0] * MIGRATORS, "\n".join(errors)

        engine = db.make_engine(url)
        try:
            db.check_schema(engine)  # at head, not half-created
            assert "completion" in inspect(engine).get_table_names()
        finally:
            engine.dispose()
