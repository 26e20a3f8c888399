"""The swapper's bookkeeping with a real store and registry, and a fake adapter host."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from safetensors.numpy import save_file

from feedback import db
from feedback.adapters.registry import Registry
from serve.swap import Swapper

BASE = "tiny-base"


class FakeHost:
    """Records what the swapper asks of the model."""

    def __init__(self) -> None:
        self.adapters: dict[str, str] = {}
        self.loads = 0
        self.merged: str | None = None

    def load(self, name: str, folder) -> str:  # noqa: ANN001
        self.loads += 1
        return name

    def add(self, adapter: str) -> None:
        self.adapters[adapter] = adapter

    def remove(self, name: str) -> None:
        self.adapters.pop(name)

    def merge(self, name: str) -> bool:
        self.merged = name
        return True


@pytest.fixture
def setup(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    registry = Registry(tmp_path / "adapters", engine)
    host = FakeHost()
    swapper = Swapper(engine, host, base_model=BASE, slots=2, poll_seconds=0.05)
    yield registry, host, swapper
    engine.dispose()


def add(registry: Registry, tmp_path) -> str:  # noqa: ANN001
    folder = tmp_path / f"src-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    rng = np.random.default_rng()
    save_file(
        {"base_model.model.q.lora_A.weight": rng.standard_normal((2, 4), dtype=np.float32)},
        str(folder / "adapter_model.safetensors"),
    )
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": BASE}))
    return registry.add(folder, base_model=BASE).version


def test_in_flight_leases_keep_old_adapters_and_a_rollback_reuses_them(setup, tmp_path):
    registry, host, swapper = setup
    v1, v2 = add(registry, tmp_path), add(registry, tmp_path)
    registry.promote(v1, actor="t")
    swapper.sync()
    on_v1 = swapper.lease_default()
    registry.promote(v2, actor="t")
    swapper.sync()
    assert swapper.serving == v2 and swapper.loaded == [v1, v2]  # v1 still has a request
    registry.rollback(actor="t")
    swapper.sync()
    assert swapper.serving == v1 and host.loads == 2  # back to v1 without loading it again
    on_v1.release()
    assert swapper.loaded == [v1] and list(host.adapters) == [f"{v1}#1"]  # v2 unloaded
    assert host.merged == f"{v1}#1"


def test_a_swap_waits_for_a_free_slot_and_memory_stays_bounded(setup, tmp_path):
    registry, host, swapper = setup  # two slots
    v1, v2, v3 = (add(registry, tmp_path) for _ in range(3))
    registry.promote(v1, actor="t")
    swapper.sync()
    on_v1 = swapper.lease_default()
    registry.promote(v2, actor="t")
    swapper.sync()
    on_v2 = swapper.lease_default()
    registry.promote(v3, actor="t")
    swapper.sync()  # both slots are busy: v3 waits, v2 keeps serving
    assert swapper.serving == v2 and len(host.adapters) == 2
    on_v1.release()
    swapper.sync()
    assert swapper.serving == v3 and swapper.loaded == [v2, v3]
    on_v2.release()
    assert swapper.loaded == [v3] and len(host.adapters) == 1


def test_a_broken_promotion_is_refused_once_and_leases_stay_on_the_current(setup, tmp_path, caplog):
    registry, host, swapper = setup
    good, bad = add(registry, tmp_path), add(registry, tmp_path)
    registry.promote(good, actor="t")
    swapper.sync()
    (registry.path(bad) / "manifest.json").write_text("{}")
    registry.promote(bad, actor="t", force=True)
    swapper.sync()
    swapper.sync()
    assert swapper.serving == good and swapper.stats.refused == 1
    lease = swapper.lease_default()  # does not wait for the refused adapter
    assert lease.version == good
    assert sum("refusing adapter" in r.getMessage() for r in caplog.records) == 1
