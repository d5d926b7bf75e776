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
import argparse

import torch
import torch.nn as nn

from pytorch_mnist import fit, idx


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
    fit(model, (x_train, y_train), (x_test, y_test), args.epochs, args.batch_size)


if __name__ == "__main__":
    main()
