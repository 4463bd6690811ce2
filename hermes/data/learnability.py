"""Is the phantom learnable but not trivial? A small CNN trained on a few labeled images.

``python -m hermes.data.learnability --labeled 50`` builds the default phantom, trains a
4-block CNN from scratch (no pre-training, horizontal flips only, AdamW with a one-cycle
schedule) on the labeled part of the paper's split, and prints train and test accuracy.
Compare ``--labeled 50`` with ``--labeled 280`` (all of train) for the room that unlabeled
data could fill.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from hermes.data.build import DataConfig, load_records
from hermes.data.datasets import LabeledDataset
from hermes.data.splits import make_split


def small_cnn(num_classes: int = 2) -> nn.Module:
    """Four conv3x3-BN-ReLU-maxpool blocks (16-32-64-64 channels), global pool, linear."""
    layers: list[nn.Module] = []
    channels = (3, 16, 32, 64, 64)
    for cin, cout in zip(channels[:-1], channels[1:], strict=True):
        layers += [
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


def run(cfg: DataConfig, steps: int = 300, lr: float = 3e-3, batch: int = 16) -> dict[str, float]:
    """Train :func:`small_cnn` on the labeled split of ``cfg``; return train/test accuracy."""
    torch.manual_seed(cfg.seed)
    records, _ = load_records(cfg)
    split = make_split(records, cfg.labeled, cfg.test_fraction, cfg.seed, max_distance=-1)
    by_id = {r.id: r for r in records}

    def tensors(ids: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        ds = LabeledDataset([by_id[i] for i in ids], cfg.classes, cfg.image_size, augment=False)
        items = [ds[i] for i in range(len(ds))]
        return torch.stack([b["image"] for b in items]), torch.stack([b["label"] for b in items])

    x_train, y_train = tensors(split.labeled)
    x_test, y_test = tensors(split.test)
    net = small_cnn(len(cfg.classes))
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    for _ in range(steps):
        idx = torch.randint(0, len(x_train), (batch,))
        x = x_train[idx]
        if torch.rand(()) < 0.5:
            x = x.flip(3)
        loss = F.cross_entropy(net(x), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        train_acc = (net(x_train).argmax(1) == y_train).float().mean().item()
        test_acc = (net(x_test).argmax(1) == y_test).float().mean().item()
    return {"train_acc": train_acc, "test_acc": test_acc, "n_test": float(len(y_test))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hermes.data.learnability", description=__doc__)
    parser.add_argument("--labeled", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = DataConfig(labeled=args.labeled, image_size=args.image_size, seed=args.seed)
    start = time.time()
    result = run(cfg, args.steps)
    print(
        f"phantom, {args.labeled} labeled, {args.image_size} px, {args.steps} steps: "
        f"train acc {result['train_acc']:.3f}, test acc {result['test_acc']:.3f} "
        f"(n={int(result['n_test'])}), {time.time() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
