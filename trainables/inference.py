"""Logits of a trained trial, rebuilt from its checkpoint.

A trial reports scalar metrics only; its checkpoint holds the model weights and the resolved config, and the splits
are a pure function of `data` (split_seed included), so any split's predictions can be recomputed exactly — for
post-hoc calibration studies, reliability diagrams and ECE uncertainty.
"""
from __future__ import annotations

from typing import Iterable

import torch

SPLITS = ("train", "calib", "val", "test")


@torch.no_grad()
def split_logits(state: dict | str, splits: Iterable[str] = ("calib", "val", "test"),
                 device: str | torch.device = "cpu") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{split: (float32 logits [N, K] on the CPU, int64 labels [N])} for a checkpoint (a state dict as saved by
    trainables.trial, or a path to it / to its directory). A checkpoint of your own training loop
    (trainables.user_loop) holds the logits it reported: those are returned (test on the final epoch only)."""
    from gce_search.trainables.config import resolve
    from gce_search.trainables.data import eval_batches, load_splits
    from gce_search.trainables.models import build_model

    if not isinstance(state, dict):
        from gce_search.trainables.trial import load_checkpoint

        state = load_checkpoint(str(state))
    splits = list(splits)
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"splits: unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if "model" not in state and state.get("loop") is not None:
        # a `trainable:` loop's checkpoint: it holds the epoch's logits, not a model gce-search could rebuild
        from gce_search.trainables.user_loop import stored_logits

        return stored_logits(state, splits)
    cfg = resolve(state["config"])
    data = load_splits(cfg["data"], device=device)
    model = build_model(cfg["model"], data.in_channels, data.num_classes, data.image_size)
    model.load_state_dict(state["model"])
    # the memory layout the trial evaluated in (its precision choice): a conv sums in another order in another one
    layout = torch.channels_last if (state.get("precision") or {}).get("channels_last") else torch.contiguous_format
    model.to(device).eval()
    if layout is torch.channels_last:
        model = model.to(memory_format=layout)
    batch = cfg["train"]["eval_batch_size"]
    out = {}
    for split in splits:
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        chunks = [model(xb.contiguous(memory_format=layout)).float().cpu() for xb in eval_batches(x, batch)]
        logits = torch.cat(chunks) if chunks else torch.zeros(0, data.num_classes)
        out[split] = (logits, y.cpu())
    return out
