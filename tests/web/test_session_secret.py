"""The session signing key: from TUNEBACK_SECRET_KEY, or generated once into the data dir."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from feedback.settings import Settings
from feedback.web.setup import SECRET_FILE, session_secret


def test_a_generated_key_is_private_and_shared_by_every_worker(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    with ThreadPoolExecutor(8) as pool:  # workers starting at once agree on one key
        keys = set(pool.map(lambda _: session_secret(settings), range(16)))
    assert len(keys) == 1
    path = tmp_path / "data" / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(keys.pop()) >= 32
    assert [p.name for p in path.parent.iterdir()] == [SECRET_FILE]  # no temp files left
    assert session_secret(settings) == path.read_text().strip()  # a restart reuses it


def test_the_setting_wins_and_must_be_long_enough(tmp_path):
    assert session_secret(Settings(data_dir=tmp_path, secret_key="x" * 40)) == "x" * 40
    assert not (tmp_path / SECRET_FILE).exists()
    with pytest.raises(ValueError, match="at least 16"):
        session_secret(Settings(data_dir=tmp_path, secret_key="short"))


def test_an_emptied_key_file_is_refused_rather_than_signing_with_nothing(tmp_path):
    (tmp_path / SECRET_FILE).write_text("\n")
    with pytest.raises(ValueError, match="no usable secret"):
        session_secret(Settings(data_dir=tmp_path))


def test_an_unusable_data_dir_still_starts_with_a_per_process_key(tmp_path, caplog):
    (tmp_path / "a-file").write_text("")  # a data dir under a file cannot be made, even by root
    settings = Settings(data_dir=tmp_path / "a-file" / "data")
    first, second = session_secret(settings), session_secret(settings)
    assert first != second and len(first) >= 32
    assert "TUNEBACK_SECRET_KEY" in caplog.text
