#!/usr/bin/env python3
"""The mnist-gpu model in PyTorch, for side-by-side timing and accuracy.

Identical model and settings: Flatten -> BatchNorm1d(784, eps=1e-3, momentum=0.01, i.e.
Keras' 0.99) -> Linear(784, 128) + ReLU -> Linear(128, 10); Glorot-uniform weights, zero
biases; Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-7); mean cross-entropy from logits;
batch 32, reshuffled every epoch, last partial batch kept; 10 epochs; test set evaluated
after every epoch. Reads the project's own assets/mnist/*.gz.

    pip install torch numpy
    python3 benches/reference/pytorch_mnist.py [--batch-size 32] [--epochs 10] [--raw-pixels] [--threads 2]
        [--hidden 128] [--device cpu]

`--hidden 4096,4096` gives `mnist-gpu train --hidden 4096,4096`'s model (a ReLU after each
hidden layer); `--device cuda` trains on the GPU (the data moved there first).

Prints one line per epoch with the training pass's seconds, like `mnist-gpu train`.
"""
import argparse, gzip, pathlib, time

import numpy as np
import torch
import torch.nn as nn

ROOT = pathlib.Path(__file__).resolve().parents[2] / "assets" / "mnist"


def idx(name):
    data = gzip.open(ROOT / f"{name}.gz", "rb").read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--raw-pixels", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--hidden", default="128", help="hidden widths, comma-separated")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    scale = 1.0 if args.raw_pixels else 1.0 / 255.0
    x_train = torch.tensor(idx("train-images-idx3-ubyte"), dtype=torch.float32).reshape(-1, 784) * scale
    y_train = torch.tensor(idx("train-labels-idx1-ubyte"), dtype=torch.long)
    x_test = torch.tensor(idx("t10k-images-idx3-ubyte"), dtype=torch.float32).reshape(-1, 784) * scale
    y_test = torch.tensor(idx("t10k-labels-idx1-ubyte"), dtype=torch.long)
    device = torch.device(args.device)
    x_train, y_train, x_test, y_test = (t.to(device) for t in (x_train, y_train, x_test, y_test))
    print(f"train: {len(x_train)} x 28 x 28, test: {len(x_test)} x 28 x 28, torch {torch.__version__}, "
          f"{args.threads} threads, device {device}, hidden {args.hidden}")

    widths = [784] + [int(w) for w in args.hidden.split(",")]
    layers = [nn.BatchNorm1d(784, eps=1e-3, momentum=0.01)]
    for w_in, w_out in zip(widths, widths[1:]):
        layers += [nn.Linear(w_in, w_out), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(widths[-1], 10)).to(device)
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    fit(model, (x_train, y_train), (x_test, y_test), args.epochs, args.batch_size)


def fit(model, train, test, epochs, batch_size):
    """Keras' fit, as mnist-gpu trains: Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-7), mean
    cross-entropy from logits, a new shuffle every epoch with the last partial batch kept,
    and the test set evaluated after every epoch (1,000 images at a time). Prints one
    line per epoch with the training pass's seconds. Also used by pytorch_convnet.py."""
    (x_train, y_train), (x_test, y_test) = train, test
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), device=x_train.device)
        start = time.perf_counter()
        loss_sum, correct = 0.0, 0
        for i in range(0, len(order), batch_size):
            idx_b = order[i: i + batch_size]
            xb, yb = x_train[idx_b], y_train[idx_b]
            logits = model(xb)
            loss = loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx_b)
            correct += (logits.argmax(1) == yb).sum().item()
        seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(x_test[i: i + 1000]) for i in range(0, len(x_test), 1000)])
            val_loss = loss_fn(logits, y_test).item()
            val_acc = (logits.argmax(1) == y_test).float().mean().item()
        n = len(x_train)
        print(f"Epoch {epoch}/{epochs} - {seconds:.2f}s ({n / seconds:.0f} samples/s) - loss: {loss_sum / n:.4f}"
              f" - accuracy: {correct / n:.4f} - val_loss: {val_loss:.4f} - val_accuracy: {val_acc:.4f}")


if __name__ == "__main__":
    main()
