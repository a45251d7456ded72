"""The example's own training loop: `trainable: "byo_loop:train"`.

AdamW with a cosine learning rate per epoch, mini-batches in an order drawn from a generator of its own, the
configured loss (`session.loss`: the `loss:` section, GCE here), and after each epoch the calib/val/test logits
handed to `session.report`, which calibrates, scores, reports and checkpoints. The state it hands over (model,
optimiser, generator) is what a resumed trial needs to go on where it stopped.
"""
from __future__ import annotations

import math

import torch


@torch.no_grad()
def _logits(model: torch.nn.Module, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


def train(config: dict, session) -> None:
    data = session.data  # the data: section (an .npz of arrays), split into train/calib/val/test
    model = session.build_model()  # the model: section (byo_net.make_net with its keywords)
    tc = config["train"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc["lr"], weight_decay=tc["weight_decay"])
    order = torch.Generator().manual_seed(config["seed"])
    restored = session.restored_state  # None on a fresh start
    if restored is not None:
        model.load_state_dict(restored["model"])
        optimizer.load_state_dict(restored["optimizer"])
        order.set_state(restored["order"])
    x, y = data.train_x, data.train_y
    batch = min(tc["batch_size"], x.shape[0])
    for epoch in range(session.start_epoch + 1, session.epochs + 1):
        lr = tc["lr"] * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / session.epochs))
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        perm = torch.randperm(x.shape[0], generator=order).to(x.device)
        total, correct, seen = 0.0, 0, 0
        for i in range(0, x.shape[0] - batch + 1, batch):  # the last partial batch is dropped
            idx = perm[i:i + batch]
            out = model(x[idx])
            loss = session.loss(out, y[idx]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss) * idx.shape[0]
            correct += int((out.argmax(1) == y[idx]).sum())
            seen += idx.shape[0]
        logits = {split: (_logits(model, getattr(data, f"{split}_x")), getattr(data, f"{split}_y"))
                  for split in ("calib", "val", "test")}
        session.report(epoch=epoch, logits=logits, train_loss=total / seen,
                       state={"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "order": order.get_state()},
                       metrics={"lr": lr, "train/acc": correct / seen})
