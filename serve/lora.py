"""LoRA adapters hosted on one base model, switched per batch without touching its weights.

An adapter loaded here is a set of ``(A, B * scaling)`` pairs keyed by the name
of the linear layer they adapt. A batch runs in one of four modes (see
:meth:`AdapterHost.activate` and :meth:`AdapterHost.activate_rows`):

- base: the layers are the plain base model;
- unmerged: forward hooks add ``x Aᵀ Bᵀ`` on the adapter's layers;
- merged: each adapted layer's weight is pointed at a buffer holding
  ``W + B A``, so decoding costs exactly what the plain model costs;
- mixed: the rows of one batch use different adapters (or none): the layers
  are the base model, and one hook per adapted layer adds each adapter's
  ``x Aᵀ Bᵀ`` to that adapter's rows only (a merged adapter's rows too), so
  several lanes decode in one forward pass and each row gets what its adapter
  alone would give.

The base weights are never modified, so switching mode or adapter is a matter
of pointers, and merging is exact every time (no merge/unmerge drift). Merged
buffers are allocated once per layer and reused: memory stays flat however
many times adapters are swapped.

Validation happens before anything is attached (PEFT's lesson from hotswap):
:func:`read_lora_config` refuses LoRA variants this host cannot apply, and
:meth:`AdapterHost.load` checks every tensor's module, shape and rank.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from feedback.adapters.files import CONFIG_FILE, WEIGHTS_FILE, CorruptAdapterError, read_json_object

PEFT_PREFIX = "base_model.model."
# LoRA variants whose forward differs from plain LoRA: serving them as plain
# LoRA would give wrong answers, so they are refused.
UNSUPPORTED_OPTIONS = (
    "use_dora", "alora_invocation_tokens", "arrow_config", "layer_replication",
    "modules_to_save", "trainable_token_indices", "target_parameters", "lora_bias",
    "use_qalora", "use_bdlora", "fan_in_fan_out", "megatron_config", "kasa_config",
    "monteclora_config", "velora_config", "alpha_pattern",
)  # fmt: skip


class IncompatibleAdapterError(CorruptAdapterError):
    """An intact adapter this model cannot host: other modules, shapes, rank or LoRA variant."""

    code = "incompatible_adapter"


@dataclass(frozen=True)
class LoraSpec:
    """What ``adapter_config.json`` says about how to apply the weights."""

    rank: int
    alpha: float
    use_rslora: bool
    targets: tuple[str, ...] | str
    rank_pattern: bool

    def scaling(self, rank: int) -> float:
        return self.alpha / (math.sqrt(rank) if self.use_rslora else rank)


@dataclass
class LoadedAdapter:
    """An adapter's weights, ready to attach: module name -> (A, B * scaling)."""

    name: str
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor]]
    max_rank: int
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.nbytes = sum(a.nbytes + b.nbytes for a, b in self.deltas.values())


def read_lora_config(config: dict[str, Any]) -> LoraSpec:
    """Parse a PEFT ``adapter_config.json``; refuse what plain LoRA cannot reproduce."""
    if config.get("peft_type", "LORA") != "LORA":
        raise IncompatibleAdapterError(f"peft_type {config.get('peft_type')!r} is not LoRA")
    used = [name for name in UNSUPPORTED_OPTIONS if config.get(name)]
    if config.get("bias", "none") != "none":
        used.append("bias")
    if used:
        raise IncompatibleAdapterError(
            f"the adapter uses LoRA options this server cannot apply: {', '.join(used)}"
        )
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not _positive(rank) or not _positive(alpha) or isinstance(rank, float):
        raise IncompatibleAdapterError(f"invalid LoRA rank {rank!r} or alpha {alpha!r}")
    targets = config.get("target_modules") or ()
    targets = targets if isinstance(targets, str) else tuple(str(t) for t in targets)
    return LoraSpec(
        rank=int(rank),
        alpha=float(alpha),
        use_rslora=bool(config.get("use_rslora")),
        targets=targets,
        rank_pattern=bool(config.get("rank_pattern")),
    )


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


class AdapterHost:
    """The base model's linear layers, and the adapters attached to them.

    Thread model: :meth:`activate` and :meth:`activate_rows` run on the model
    worker thread only, around each batch. :meth:`load`, :meth:`add`,
    :meth:`remove` and :meth:`merge` may run on another thread (the swapper)
    while a batch runs: they never touch what the running batch uses (a batch
    holds its own references to the adapters' tensors, taken when it starts),
    and the merged buffers are guarded by a lock the worker holds for the whole
    of a merged batch. A mixed batch never reads the merged buffers, so it
    holds no lock and a merge may proceed beside it.
    """

    def __init__(self, model: nn.Module, *, max_rank: int, merge: bool = True) -> None:
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.layers: dict[str, nn.Linear] = {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module is not output
        }
        self.max_rank, self.merge_enabled = max_rank, merge
        self.adapters: dict[str, LoadedAdapter] = {}
        self._base = {name: layer.weight for name, layer in self.layers.items()}
        self._buffers: dict[str, nn.Parameter] = {}
        self._merged: str | None = None
        self._merge_lock = threading.Lock()
        self._leaves = {name.rsplit(".", 1)[-1] for name in self.layers}
        self._device, self._dtype = next(model.parameters()).device, next(model.parameters()).dtype

    # --- loading (any thread) -----------------------------------------------------

    def load(self, name: str, folder: Path) -> LoadedAdapter:
        """Read and check an adapter folder (already verified on disk); attach nothing."""
        spec = read_lora_config(read_json_object(folder / CONFIG_FILE))
        self._check_targets(spec)
        try:
            tensors = load_file(str(folder / WEIGHTS_FILE))
        except Exception as error:  # noqa: BLE001 - any parse failure means unusable weights
            raise CorruptAdapterError(f"{folder}: cannot read {WEIGHTS_FILE}: {error}") from None
        pairs = self._pair(tensors)
        deltas, top = {}, 0
        with torch.no_grad():
            for module, (a, b) in pairs.items():
                rank = self._check_shapes(module, a, b, spec)
                top = max(top, rank)
                a = a.to(self._device, self._dtype).contiguous()
                b = (b.to(torch.float32) * spec.scaling(rank)).to(self._device, self._dtype)
                deltas[module] = (a, b.contiguous())
        return LoadedAdapter(name, deltas, top)

    def _check_targets(self, spec: LoraSpec) -> None:
        if isinstance(spec.targets, str):
            return  # a regex or "all-linear": the weights themselves are checked below
        alien = [
            target
            for target in spec.targets
            if target not in self.layers and target.rsplit(".", 1)[-1] not in self._leaves
        ]
        if alien:
            raise IncompatibleAdapterError(
                f"the adapter targets modules this model cannot host: {sorted(alien)[:5]}"
            )

    def _pair(self, tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, ...]]:
        halves: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            stem, _, part = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
            if not key.startswith(PEFT_PREFIX) or part not in ("A.weight", "B.weight"):
                raise IncompatibleAdapterError(
                    f"unsupported tensor {key!r}: only LoRA A and B weights can be served"
                )
            if stem not in self.layers:
                raise IncompatibleAdapterError(
                    f"the adapter adapts {stem!r}, which is not a linear layer of this model"
                )
            halves.setdefault(stem, {})[part[0]] = tensor
        if not halves:
            raise IncompatibleAdapterError("the adapter holds no LoRA weights")
        missing = sorted(stem for stem, pair in halves.items() if len(pair) != 2)
        if missing:
            raise IncompatibleAdapterError(f"LoRA A or B weight missing for {missing[:5]}")
        return {stem: (pair["A"], pair["B"]) for stem, pair in halves.items()}

    def _check_shapes(self, module: str, a: torch.Tensor, b: torch.Tensor, spec: LoraSpec) -> int:
        layer = self.layers[module]
        rank = a.shape[0] if a.dim() == 2 else -1
        if a.shape != (rank, layer.in_features) or b.shape != (layer.out_features, rank):
            raise IncompatibleAdapterError(
                f"{module}: LoRA shapes A{tuple(a.shape)} B{tuple(b.shape)} do not fit a "
                f"{layer.in_features}->{layer.out_features} layer"
            )
        if rank > self.max_rank:
            raise IncompatibleAdapterError(
                f"{module}: rank {rank} is above TUNEBACK_SERVE_MAX_LORA_RANK={self.max_rank}"
            )
        if rank != spec.rank and not spec.rank_pattern:
            raise IncompatibleAdapterError(
                f"{module}: rank {rank} in the weights, but adapter_config.json says r={spec.rank}"
            )
        return rank

    # --- attaching (any thread) ---------------------------------------------------

    def add(self, adapter: LoadedAdapter) -> None:
        self.adapters[adapter.name] = adapter

    def remove(self, name: str) -> None:
        with self._merge_lock:
            if self._merged == name:
                self._merged = None
        self.adapters.pop(name, None)

    def merge(self, name: str) -> bool:
        """Fill the merged buffers with ``W + B A`` for adapter ``name``; False if disabled.

        Runs off the worker thread: batches meanwhile use the unmerged path.
        """
        if not self.merge_enabled:
            return False
        with self._merge_lock:  # waits for a merged batch in progress to end
            if self._merged == name:
                return True
            self._merged = None
        adapter = self.adapters.get(name)
        if adapter is None:
            return False
        with torch.no_grad():
            for module, (a, b) in adapter.deltas.items():
                buffer = self._buffers.get(module)
                if buffer is None:
                    buffer = nn.Parameter(torch.empty_like(self._base[module]), requires_grad=False)
                    self._buffers[module] = buffer
                torch.addmm(self._base[module], b, a, out=buffer.data)
        with self._merge_lock:
            if name in self.adapters:
                self._merged = name
        return self._merged == name

    @property
    def merged(self) -> str | None:
        return self._merged

    # --- running a batch (worker thread) ------------------------------------------

    @contextmanager
    def activate(self, name: str | None) -> Iterator[str]:
        """Set the model up for one batch with adapter ``name`` (None: the base model).

        Yields the mode used: ``"base"``, ``"merged"`` or ``"unmerged"``.
        """
        if name is None:
            self._point_weights(None)
            yield "base"
            return
        adapter = self.adapters[name]
        with self._merge_lock:
            if self._merged == name:
                self._point_weights(adapter)
                yield "merged"
                return
        self._point_weights(None)
        handles = [
            self.layers[module].register_forward_hook(_lora_hook(a, b))
            for module, (a, b) in adapter.deltas.items()
        ]
        try:
            yield "unmerged"
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def activate_rows(self, names: Sequence[str | None]) -> Iterator[str]:
        """Set the model up for one batch whose row ``i`` uses adapter ``names[i]`` (None: base).

        When every row uses the same adapter (or none) this is :meth:`activate`,
        merged fast path included. Otherwise the base weights run every row and
        one hook per adapted layer adds each adapter's ``x Aᵀ Bᵀ`` to its own
        rows only (rows without an adapter get nothing): the batch's adapters
        are stacked along the rank and a row mask keeps each row's own columns,
        so a layer costs two small products however many adapters the batch
        holds. Yields the mode used: ``"mixed"`` or one of :meth:`activate`'s.
        """
        if len(set(names)) <= 1:
            with self.activate(names[0] if names else None) as mode:
                yield mode
            return
        used = {name: self.adapters[name] for name in names if name is not None}  # KeyError first
        stacks: dict[str, list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
        for name, adapter in used.items():
            for module, (a, b) in adapter.deltas.items():
                stacks.setdefault(module, []).append((name, a, b))
        masks: dict[tuple, torch.Tensor] = {}  # layers adapted alike share their row mask
        hooks = {
            module: _rows_lora_hook(
                torch.cat([a for _, a, _ in parts]),
                torch.cat([b for _, _, b in parts], dim=1),
                self._row_mask(names, parts, masks),
            )
            for module, parts in stacks.items()
        }
        self._point_weights(None)
        handles = [self.layers[m].register_forward_hook(hook) for m, hook in hooks.items()]
        try:
            yield "mixed"
        finally:
            for handle in handles:
                handle.remove()

    def _row_mask(
        self,
        names: Sequence[str | None],
        parts: list[tuple[str, torch.Tensor, torch.Tensor]],
        cache: dict[tuple, torch.Tensor],
    ) -> torch.Tensor:
        """``(rows, 1, ranks)``: 1 where a row's own adapter's rank columns are, else 0."""
        key = tuple((name, a.shape[0]) for name, a, _ in parts)
        if key not in cache:
            mask = torch.zeros(len(names), 1, sum(a.shape[0] for _, a, _ in parts))
            start = 0
            for name, a, _ in parts:
                rows = [i for i, other in enumerate(names) if other == name]
                mask[rows, :, start : start + a.shape[0]] = 1
                start += a.shape[0]
            cache[key] = mask.to(self._device, self._dtype)
        return cache[key]

    def _point_weights(self, merged: LoadedAdapter | None) -> None:
        """Point each layer at its base weight, or at its merged buffer for ``merged``."""
        for module, layer in self.layers.items():
            if merged is not None and module in merged.deltas:
                weight = self._buffers[module]
            else:
                weight = self._base[module]
            if layer.weight is not weight:
                layer.weight = weight


def _lora_hook(a: torch.Tensor, b: torch.Tensor):  # noqa: ANN202 - a forward hook
    def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + F.linear(F.linear(args[0], a), b)

    return hook


def _rows_lora_hook(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor):  # noqa: ANN202
    """A forward hook adding each row's own adapter's LoRA term, for a batch of mixed rows.

    ``a`` and ``b`` stack the adapters' ``A`` and ``B`` along the rank; ``mask``
    keeps, for each row, only its own adapter's rank columns (none for base
    rows). So one pair of small products serves every adapter of the batch, and
    each row gets exactly its adapter's ``x Aᵀ Bᵀ``: the other columns are zeros.
    """

    def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        low = F.linear(args[0], a)
        low = low * mask.view(mask.shape[0], *([1] * (low.dim() - 2)), mask.shape[-1])
        return output.add_(F.linear(low, b))

    return hook
