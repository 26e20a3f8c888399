"""Bad adapter files are refused before they touch the serving model.

Each case puts a broken adapter into the registry the way it could really get
there (a file damaged or swapped on disk after registration, an adapter trained
for another base model, one registered by an older release without the rank
check), then tries it two ways: ``tuneback adapters promote`` (the real command,
run in-process) must refuse it with a clear message; a forced promotion must be
refused by the serving swapper, with the served adapter, its weights and the
base model's weights unchanged (``torch.equal``) and the same answer as before.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from feedback import db
from feedback.adapters import store as adapter_store
from feedback.adapters.files import CHECKSUMS, CONFIG_FILE, WEIGHTS_FILE, CorruptAdapterError
from feedback.adapters.registry import Registry
from feedback.db import write_session
from serve.engine import ModelEngine
from serve.swap import Swapper
from tests.live import tuneback_env
from tests.serve.support import PEFT_WARNING, make_lora
from tuneback.cli import cli

pytestmark = pytest.mark.filterwarnings(PEFT_WARNING)


class Stack:
    """A registry, a serving engine on the tiny model, and a swapper following the store."""

    def __init__(self, root: Path, base: Path) -> None:
        self.root, self.base = root, base
        self.url = f"sqlite:///{root / 'tuneback.db'}"
        db.upgrade(self.url)
        self.sql = db.make_engine(self.url)
        self.registry = Registry(root / "adapters", self.sql)
        self.engine = ModelEngine(base, max_rank=16)
        self.swapper = Swapper(self.sql, self.engine.host, base_model=str(base))
        self.made = 0

    def lora(self, **options) -> Path:  # noqa: ANN003
        self.made += 1
        return make_lora(self.base, self.root / f"src-{self.made}", seed=self.made, **options)

    def add(self, **options) -> str:  # noqa: ANN003
        return self.registry.add(self.lora(**options), base_model=str(self.base)).version

    def promote_cli(self, version: str):  # noqa: ANN201
        env = tuneback_env(self.root, self.url, base_model=str(self.base))
        return CliRunner().invoke(cli, ["adapters", "promote", version, "--wait", "0"], env=env)

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Every base weight, and the serving adapter's deltas, as copies."""
        host = self.engine.host
        tensors = {f"base:{name}": w.detach().clone() for name, w in host._base.items()}
        serving = self.swapper._current.adapter
        for module, (a, b) in host.adapters[serving].deltas.items():
            tensors[f"A:{module}"], tensors[f"B:{module}"] = a.clone(), b.clone()
        return tensors

    def logits(self) -> torch.Tensor:
        ids = torch.tensor([[1, 42, 7, 99, 5]])
        lease = self.swapper.lease_default()
        try:
            with self.engine.host.activate(lease.adapter), torch.inference_mode():
                return self.engine.model(ids).logits.clone()
        finally:
            lease.release()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model) -> Stack:
    stack = Stack(tmp_path_factory.mktemp("bad-adapters"), Path(tiny_model).resolve())
    good = stack.add()
    stack.registry.promote(good, actor="test")
    stack.swapper.sync()
    assert stack.swapper.serving == good
    yield stack
    stack.sql.dispose()


# --- the cases: each returns a registered version whose files are bad ----------------


def truncated_weights(stack: Stack) -> str:
    version = stack.add()
    weights = stack.registry.path(version) / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-1000])
    return version


def pickle_beside_the_weights(stack: Stack) -> str:
    version = stack.add()
    folder = stack.registry.path(version)
    torch.save(load_file(folder / WEIGHTS_FILE), folder / "adapter_model.bin")
    return version


def pickle_instead_of_the_weights(stack: Stack) -> str:
    version = stack.add()
    folder = stack.registry.path(version)
    torch.save(load_file(folder / WEIGHTS_FILE), folder / "adapter_model.bin")
    (folder / WEIGHTS_FILE).unlink()
    return version


def another_base_model(stack: Stack) -> str:
    """Intact and registered, but trained for another model."""
    folder = stack.lora()
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["base_model_name_or_path"] = "/models/some-other-model"
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    return stack.registry.add(folder, base_model="/models/some-other-model").version


def rank_unlike_its_config(stack: Stack) -> str:
    """Rank-4 weights whose config says r=8 (registered without the rank check)."""
    folder = stack.lora(rank=4)
    config = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "r": 8}))
    with pytest.raises(CorruptAdapterError, match="says rank r=8"):
        stack.registry.add(folder, base_model=str(stack.base))
    return _register_unchecked(stack, folder)


def shapes_of_another_model(stack: Stack) -> str:
    """Consistent rank, but A and B sized for a 96-wide model (ours is 64)."""
    folder = stack.lora(rank=4)
    tensors = load_file(folder / WEIGHTS_FILE)
    wider = {k: torch.zeros(4, 96) if ".lora_A." in k else torch.zeros(96, 4) for k in tensors}
    save_file(wider, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    with pytest.raises(CorruptAdapterError, match="does not fit the base model"):
        stack.registry.add(folder, base_model=str(stack.base))
    return _register_unchecked(stack, folder)


def missing_config(stack: Stack) -> str:
    version = stack.add()
    (stack.registry.path(version) / CONFIG_FILE).unlink()
    return version


def _register_unchecked(stack: Stack, source: Path) -> str:
    """Register ``source`` as an older release might have: files, checksums, row,
    without today's checks (the registry's own add refuses it, above)."""
    with write_session(stack.sql) as session:
        version = adapter_store.next_version_name(session)
    folder = stack.registry.path(version)
    shutil.copytree(source, folder)
    manifest = {"version": version, "base_model": str(stack.base)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    checksums = json.dumps({"algorithm": "sha256", "files": digests}).encode()
    (folder / CHECKSUMS).write_bytes(checksums)
    with write_session(stack.sql) as session:
        adapter_store.create_adapter_version(
            session, version=version, base_model=str(stack.base), path=str(folder.resolve()),
            checksum=hashlib.sha256(checksums).hexdigest(),
        )  # fmt: skip
        session.commit()
    return version


CASES = {
    "truncated safetensors": (truncated_weights, "truncated"),
    "pickle beside the weights": (pickle_beside_the_weights, "pickle-based files are refused"),
    "pickle instead of the weights": (pickle_instead_of_the_weights, "pickle-based files"),
    "another base model": (another_base_model, "some-other-model"),
    "rank unlike its config": (rank_unlike_its_config, "says rank r=8"),
    "shapes of another model": (shapes_of_another_model, "not fit"),
    "missing adapter_config.json": (missing_config, "adapter_config.json is missing"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_adapter_is_refused_by_promote_and_by_the_server(stack, case):
    make, message = CASES[case]
    serving = stack.swapper.serving
    before, answer = stack.snapshot(), stack.logits()
    version = make(stack)

    promoted = stack.promote_cli(version)
    assert promoted.exit_code == 1, promoted.output
    assert message in promoted.output and "Traceback" not in promoted.output
    assert stack.registry.promoted().version == serving

    # Forced past the command line, the swapper still refuses it.
    stack.registry.promote(version, actor="test", force=True)
    refused = stack.swapper.stats.refused
    stack.swapper.sync()
    assert stack.swapper.stats.refused == refused + 1
    assert message in stack.swapper.stats.refusals[_key(stack)]
    assert stack.swapper.serving == serving
    after = stack.snapshot()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert torch.equal(stack.logits(), answer)

    stack.registry.promote(serving, actor="test")  # back to the good one for the next case
    stack.swapper.sync()


def _key(stack: Stack) -> tuple:
    row = stack.registry.promoted()
    return (row.version, row.checksum, row.promoted_at)
