"""Write the example's data: byo.npz, a 4-class problem on 16-dimensional feature vectors with label noise.

    python make_data.py [--out byo.npz] [--train 2400] [--test 600] [--seed 0]

Each class is a ring segment in a random 2-D plane of R^16, plus Gaussian noise in every dimension, and 10% of the
labels are flipped to another class: no classifier reaches 100%, and an overconfident one is miscalibrated. The file
holds x_train, y_train, x_test, y_test (float32 N×16, int64 N), the layout of `data: {name: arrays, path: ...}`.
"""
from __future__ import annotations

import argparse

import numpy as np

CLASSES = 4
DIM = 16


def make(n: int, rng: np.random.Generator, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, CLASSES, n)
    angle = (y + rng.uniform(0.1, 0.9, n)) * (2 * np.pi / CLASSES)
    radius = 1.0 + 0.5 * (y % 2) + rng.normal(0.0, 0.1, n)
    plane = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    x = plane @ basis + rng.normal(0.0, 0.35, (n, DIM))
    flip = rng.random(n) < 0.10
    y = np.where(flip, (y + rng.integers(1, CLASSES, n)) % CLASSES, y)
    return x.astype(np.float32), y.astype(np.int64)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="byo.npz")
    parser.add_argument("--train", type=int, default=2400, help="samples in the train/calib/val pool")
    parser.add_argument("--test", type=int, default=600, help="samples in the test split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    basis = np.linalg.qr(rng.normal(size=(DIM, 2)))[0].T  # 2 orthonormal rows: the plane the classes live in
    x_train, y_train = make(args.train, rng, basis)
    x_test, y_test = make(args.test, rng, basis)
    np.savez(args.out, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    print(f"wrote {args.out}: x_train {x_train.shape}, x_test {x_test.shape}, {CLASSES} classes")


if __name__ == "__main__":
    main()
