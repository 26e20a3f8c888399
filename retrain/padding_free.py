"""Padding-free SFT batches: the examples of a batch laid end to end in one sequence.

No compute goes to pad tokens. Positions restart at each example (TRL's collator),
each example attends only to itself (:func:`varlen_sdpa`), and only answer tokens
go through the LM head (:class:`PaddingFreeLoss`). The batches, the loss and the
gradients are those of padded training (tests/retrain/test_train_batching.py);
:func:`retrain.train.build_sft_trainer` turns it on with ``TrainConfig.padding_free``.
"""

from __future__ import annotations

from typing import Any

VARLEN_ATTENTION = "tuneback_varlen_sdpa"


def varlen_sdpa(module, query, key, value, attention_mask, **kwargs):  # noqa: ANN001, ANN201
    """Causal SDPA inside each example of a padding-free batch.

    The collator gives the examples' boundaries (``cu_seq_lens_q``); attending
    within each one gives every token exactly its context when alone. One SDPA
    call over the whole row would need a dense block-diagonal mask, quadratic in
    the row's length and mostly masked (several times the attention time on CPU).
    Anything else (generation, evaluation, DPO's padded batches, sliding-window
    models) takes stock SDPA with the mask transformers built from the positions.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if (
        bounds is None
        or query.shape[0] != 1
        or query.shape[2] != key.shape[2]
        or kwargs.get("sliding_window") is not None
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    lengths = bounds.diff().tolist()
    # split (not slicing) so that the backward is one cat, not a zero-filled
    # full-size gradient per example
    q_parts, k_parts, v_parts = (t.split(lengths, dim=2) for t in (query, key, value))
    outputs = [
        torch.nn.functional.scaled_dot_product_attention(
            q,
            k,
            v,
            dropout_p=kwargs.get("dropout", 0.0),
            scale=kwargs.get("scaling"),
            is_causal=True,
            enable_gqa=query.shape[1] != key.shape[1],
        )
        for q, k, v in zip(q_parts, k_parts, v_parts, strict=True)
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def use_varlen_attention(model: Any) -> None:
    """Switch an SDPA model to ``varlen_sdpa`` (flash attention is varlen already)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN_ATTENTION, varlen_sdpa)
    AttentionMaskInterface.register(VARLEN_ATTENTION, sdpa_mask)
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(VARLEN_ATTENTION)


class PaddingFreeLoss:
    """Mixin for SFTTrainer: the padding-free loss, with LM-head logits for answer tokens only.

    The sum of the answer tokens' cross-entropy over their count, as in padded
    training; prompt positions, most of the tokens of chat data, never reach the
    vocabulary-wide LM head (TRL's fused head scores every position off GPU).
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        import torch

        if return_outputs or self.aux_loss_enabled or "cu_seq_lens_q" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        targets = inputs.pop("labels")[0, 1:]  # the collator masked each example's first label
        keep = (targets != -100).nonzero().squeeze(-1)
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits[0]
        count = keep.numel() if num_items_in_batch is None else num_items_in_batch
        loss = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
        return loss / torch.as_tensor(count).clamp(min=1)
