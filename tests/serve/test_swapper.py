"""The swapper's bookkeeping with a real store and registry, and a fake adapter host."""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest
from safetensors.numpy import save_file

from feedback import db
from feedback.adapters.registry import Registry
from feedback.db import write_session
from feedback.lanes import create_lane
from serve.schemas import OverloadedError
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


# --- lanes -------------------------------------------------------------------------


def make_lanes(registry: Registry, *names: str) -> list[Registry]:
    """Create the lanes in the store; each lane's registry."""
    with write_session(registry.engine) as session:
        for name in names:
            create_lane(session, name=name)
        session.commit()
    return [registry.for_lane(name) for name in names]


def test_each_lane_follows_its_own_promotion_and_rollback(setup, tmp_path):
    registry, host, swapper = setup
    a, b = make_lanes(registry, "a", "b")
    va1, va2, vb = add(a, tmp_path), add(a, tmp_path), add(b, tmp_path)
    a.promote(va1, actor="t")
    b.promote(vb, actor="t")
    swapper.sync()
    leases = {lane: swapper.lease_lane(lane) for lane in ("a", "b", "default")}
    assert {lane: lease.version for lane, lease in leases.items()} == {
        "a": va1, "b": vb, "default": None,
    }  # fmt: skip
    assert [lease.fingerprint for lease in leases.values()] == [
        f"a:{va1}",
        f"b:{vb}",
        "default:base",
    ]
    for lease in leases.values():
        lease.release()
    a.promote(va2, actor="t")
    swapper.sync()
    assert swapper.lease_lane("a").version == va2 and swapper.lease_lane("b").version == vb
    a.rollback(actor="t")
    a.rollback(actor="t")  # back to the base model
    swapper.sync()
    assert swapper.lease_lane("a").version is None and swapper.lease_lane("b").version == vb
    state = swapper.replica_state()
    assert state["a"]["serving"] is None and state["b"] == {
        "serving": vb, "refused": None, "reason": None, "loaded": True,
    }  # fmt: skip
    assert host.merged is None  # only the default lane's adapter is ever merged


def test_a_lane_with_a_broken_promotion_keeps_its_adapter_and_others_are_untouched(
    setup, tmp_path, caplog
):
    registry, host, swapper = setup
    a, b = make_lanes(registry, "a", "b")
    good, bad, vb = add(a, tmp_path), add(a, tmp_path), add(b, tmp_path)
    a.promote(good, actor="t")
    b.promote(vb, actor="t")
    swapper.sync()
    (a.path(bad) / "adapter_model.safetensors").write_bytes(b"not the weights")
    a.promote(bad, actor="t", force=True)
    swapper.sync()
    swapper.sync()
    assert swapper.lease_lane("a").version == good and swapper.lease_lane("b").version == vb
    state = swapper.lane_states()
    assert state["a"]["refused"] == bad and "adapter_model.safetensors" in state["a"]["reason"]
    assert state["b"]["refused"] is None and state["default"]["refused"] is None
    assert sum("refusing adapter" in r.getMessage() for r in caplog.records) == 1


def test_past_max_adapters_the_least_recently_used_idle_lane_is_unloaded_and_reloaded(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    registry, host = Registry(tmp_path / "adapters", engine), FakeHost()
    swapper = Swapper(
        engine, host, base_model=BASE, max_adapters=2, poll_seconds=0.05, wait_seconds=1.5
    )
    a, b, c = make_lanes(registry, "a", "b", "c")
    versions = {}
    for lane in (a, b, c):
        versions[lane.lane] = add(lane, tmp_path)
        lane.promote(versions[lane.lane], actor="t")
    swapper.start()
    try:
        _until(lambda: sum(s["serving"] is not None for s in swapper.lane_states().values()) == 3)
        assert len(swapper.loaded) == 2 and len(host.adapters) == 2  # one lane was unloaded
        for lane in ("a", "b", "c", "a"):  # each served by its own adapter, reloaded on demand
            lease = swapper.lease_lane(lane)
            assert lease.version == versions[lane] and len(host.adapters) <= 2
            lease.release()
        assert swapper.stats.unloads >= 2 and host.loads >= 5
        # b was used least recently: c's reload unloads b, not a.
        states = swapper.lane_states()
        assert [states[lane]["loaded"] for lane in ("a", "b", "c")] == [True, False, True]
        # With both loaded adapters leased, b cannot be loaded: a 503, never another adapter.
        held = [swapper.lease_lane("a"), swapper.lease_lane("c")]
        with pytest.raises(OverloadedError) as refused:
            swapper.lease_lane("b")
        assert refused.value.status == 503 and refused.value.retry_after >= 1
        for lease in held:
            lease.release()
        lease = swapper.lease_lane("b")
        assert lease.version == versions["b"]
        lease.release()
        # A reload is verified like every load: damaged files are refused, not served.
        _until(lambda: not swapper.lane_states()["a"]["loaded"] or _use(swapper, "c", "b"))
        (a.path(versions["a"]) / "adapter_model.safetensors").write_bytes(b"damaged")
        with pytest.raises(OverloadedError):
            swapper.lease_lane("a")
        assert swapper.lane_states()["a"]["refused"] == versions["a"]
        assert swapper.lease_lane("c").version == versions["c"]
    finally:
        swapper.stop()
        engine.dispose()


def _use(swapper: Swapper, *lanes: str) -> bool:
    for lane in lanes:
        swapper.lease_lane(lane).release()
    return False


def _until(condition, timeout: float = 10) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class PickyHost(FakeHost):
    """Refuses the weights of adapters whose folder holds a ``misfit`` file, as the real
    host refuses shapes that do not fit the model (after the files verified)."""

    def load(self, name: str, folder) -> str:  # noqa: ANN001
        if (folder / "misfit").exists():
            from serve.lora import IncompatibleAdapterError

            raise IncompatibleAdapterError("shapes do not fit")
        return super().load(name, folder)


def test_an_adapter_that_does_not_fit_unloads_no_other_lane(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    registry, host = Registry(tmp_path / "adapters", engine), PickyHost()
    swapper = Swapper(engine, host, base_model=BASE, max_adapters=2)
    try:
        a, b = make_lanes(registry, "a", "b")
        for lane in (registry, a):
            lane.promote(add(lane, tmp_path), actor="t")
        swapper.sync()
        before = dict(host.adapters)
        version = add(b, tmp_path)
        (b.path(version) / "misfit").touch()  # not listed in checksums.json: files verify
        b.promote(version, actor="t", force=True)
        swapper.sync()
        assert swapper.lane_states()["b"]["refused"] == version
        assert host.adapters == before  # nobody was unloaded for an adapter that was refused
        assert swapper.stats.unloads == 0
    finally:
        engine.dispose()
