#!/usr/bin/env python3
"""Keras' "Simple MNIST convnet" in PyTorch, for side-by-side timing and accuracy with
`mnist-gpu train --model convnet`.

Identical model and settings: Conv2d(1, 32, 3) + ReLU -> MaxPool2d(2) -> Conv2d(32, 64, 3)
+ ReLU -> MaxPool2d(2) -> Flatten -> Dropout(0.5) -> Linear(1600, 10); Glorot-uniform
kernels (Keras' fans: k*k*in and k*k*out), zero biases; Adam(lr=1e-3, betas=(0.9,
0.999), eps=1e-7); mean cross-entropy from logits; pixels / 255; batch 128, reshuffled
every epoch, last partial batch kept; 15 epochs; test set evaluated after every epoch.
Reads the project's own assets/mnist/*.gz.

    pip install torch numpy
    python3 benches/reference/pytorch_convnet.py [--batch-size 128] [--epochs 15] [--threads 2] [--device cuda]

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


def images(name):
    return torch.tensor(idx(name), dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0


def convnet():
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(1600, 10),
    )
    for layer in model:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            # PyTorch's xavier_uniform_ takes the same fans as Keras' glorot_uniform.
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    dev = torch.device(args.device)
    x_train, x_test = images("train-images-idx3-ubyte").to(dev), images("t10k-images-idx3-ubyte").to(dev)
    y_train = torch.tensor(idx("train-labels-idx1-ubyte"), dtype=torch.long).to(dev)
    y_test = torch.tensor(idx("t10k-labels-idx1-ubyte"), dtype=torch.long).to(dev)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{args.threads} threads"
    print(f"train: {len(x_train)} x 28 x 28, test: {len(x_test)} x 28 x 28, torch {torch.__version__}, {where}")

    model = convnet().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()

    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), device=dev)
        start = time.perf_counter()
        loss_sum, correct = 0.0, 0
        for i in range(0, len(order), args.batch_size):
            idx_b = order[i: i + args.batch_size]
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
        print(f"Epoch {epoch}/{args.epochs} - {seconds:.2f}s ({n / seconds:.0f} samples/s) - loss: {loss_sum / n:.4f}"
              f" - accuracy: {correct / n:.4f} - val_loss: {val_loss:.4f} - val_accuracy: {val_acc:.4f}")


if __name__ == "__main__":
    main()
