"""Train a LeNet-5-style CNN on scikit-learn's handwritten digits, twice: with PyTorch's layers,
and after convc.torch.convert (its convolutions then run convc's forward, grad_input and
grad_weight kernels, its max pools convc's max pooling and its gradient). Same initial weights, same seed, same data order: the two loss curves must
agree, and both must reach the test accuracy.

    pip install -e '.[torch,digits]'         # + '.[plot]' for --plot
    python examples/train_digits.py [--epochs 30] [--plot curves.png]

The data: 1,797 8x8 grey images of the digits 0-9 that ship inside scikit-learn (real data, no
download); a fixed 80/20 split. The model: conv 3x3 (1 -> 6) -> ReLU -> max pool 2 -> conv 3x3
(6 -> 16) -> ReLU -> max pool 2 -> linear 64 -> 120 -> 84 -> 10 (convert replaces the two
convolutions and the two max pools; the linear layers stay PyTorch's). Checked: the losses of the
first 100 steps agree to 1e-3 relative, and the test accuracy after training is at least 97 %.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
from torch import nn

import convc.torch as convc_torch

PARITY_STEPS, PARITY_RTOL, ACCURACY = 100, 1e-3, 0.97


def load_digits(seed: int = 0):
    """(x_train, y_train, x_test, y_test): images (N, 1, 8, 8) float32, standardized with the
    training set's mean and deviation; labels int64."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    train, test = order[:cut], order[cut:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


def lenet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),      # 6 x 4 x 4
        nn.Conv2d(6, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),     # 16 x 2 x 2
        nn.Flatten(), nn.Linear(64, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10))


def train(model, data, epochs: int, batch: int, lr: float, seed: int = 0, max_steps=None):
    """Adam, the learning rate divided by 10 at half and at 5/6 of the epochs. -> (loss per step,
    seconds per epoch, test accuracy). The batch order comes from `seed` alone, so two calls see
    the same batches."""
    x_train, y_train, x_test, y_test = data
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.MultiStepLR(optimizer, [epochs // 2, epochs * 5 // 6], 0.1)
    order = torch.Generator().manual_seed(seed)
    losses, epoch_seconds = [], []
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for index in torch.randperm(len(x_train), generator=order).split(batch):
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x_train[index]), y_train[index])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if max_steps and len(losses) >= max_steps:
                break
        epoch_seconds.append(time.perf_counter() - start)
        decay.step()
        if max_steps and len(losses) >= max_steps:
            break
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return losses, epoch_seconds, accuracy


def parity(reference, ours, steps: int = PARITY_STEPS) -> float:
    """The largest relative difference of the two loss curves over their first `steps` steps."""
    pairs = list(zip(reference, ours))[:steps]
    return max(abs(a - b) / max(abs(a), 1e-12) for a, b in pairs)


def run(epochs: int = 30, batch: int = 32, lr: float = 2e-3, seed: int = 0, max_steps=None,
        out=print) -> dict:
    data = load_digits(seed)
    reference = lenet(seed)
    ours = copy.deepcopy(reference)
    report = convc_torch.convert(ours)
    out(f"digits: {len(data[0])} training images, {len(data[2])} test images, 8x8; batch {batch}, "
        f"Adam lr {lr} (/10 at epochs {epochs // 2} and {epochs * 5 // 6}), {epochs} epochs")
    out("convert: " + str(report).replace("\n", "\n  "))
    results = {}
    for name, model in (("PyTorch", reference), ("convc", ours)):
        losses, seconds, accuracy = train(model, data, epochs, batch, lr, seed, max_steps)
        # The first epoch compiles convc's kernels (or loads them from the disk cache).
        steady = seconds[1:] or seconds
        results[name] = {"losses": losses, "epoch_seconds": seconds, "accuracy": accuracy}
        out(f"{name:8s} test accuracy {accuracy * 100:.1f} %, final loss {losses[-1]:.4f}, "
            f"{sum(steady) / len(steady) * 1e3:.0f} ms per epoch (first epoch "
            f"{seconds[0] * 1e3:.0f} ms)")
    worst = parity(results["PyTorch"]["losses"], results["convc"]["losses"])
    steps = min(PARITY_STEPS, len(results["convc"]["losses"]))
    results["parity"] = worst
    out(f"loss curves, first {steps} steps: largest relative difference {worst:.2e} "
        f"(target <= {PARITY_RTOL:g}: {'reached' if worst <= PARITY_RTOL else 'NOT reached'})")
    best = min(results["PyTorch"]["accuracy"], results["convc"]["accuracy"])
    out(f"test accuracy >= {ACCURACY * 100:.0f} %: {'reached' if best >= ACCURACY else 'NOT reached'}")
    return results


def plot(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, style in (("PyTorch", "-"), ("convc", "--")):
        ax.plot(results[name]["losses"], style, label=f"{name} layers", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_yscale("log")
    ax.set_title("LeNet-5 on scikit-learn digits: PyTorch's conv/pool layers vs convc's")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, metavar="PNG", help="save both loss curves")
    args = parser.parse_args(argv)
    results = run(args.epochs, args.batch, args.lr, args.seed)
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    ok = results["parity"] <= PARITY_RTOL and min(
        results[n]["accuracy"] for n in ("PyTorch", "convc")) >= ACCURACY
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
