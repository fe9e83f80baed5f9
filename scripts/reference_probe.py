#!/usr/bin/env python3
"""Independent reference for src/metrics/probe.rs (numpy only): the ridge-regression linear probe.

Draws a small classification problem whose classes differ in a few of 6 features (one feature constant, to
check it is harmless), fits the ridge classifier in numpy's own way (np.linalg.solve on the normal
equations, features standardized with the training rows' mean and population std, an unpenalized bias,
one-hot targets), and writes the training rows, the test rows, the class scores of each test row, the test
accuracy and the majority baseline to tests/fixtures/probe/golden.json, which tests/probe.rs replays.
Run from the repository root:

    .venv/bin/python scripts/reference_probe.py
"""
import json
import os

import numpy as np

RNG = np.random.default_rng(20261130)
OUT = os.path.join("tests", "fixtures", "probe", "golden.json")
CLASSES, D, N_TRAIN, N_TEST, LAMBDA = 3, 6, 40, 15, 0.5


def draw(n):
    y = RNG.integers(0, CLASSES, n)
    x = RNG.normal(0.0, 1.0, (n, D))
    x[:, 0] += 1.5 * (y == 1)  # class 1 shows in feature 0
    x[:, 1] -= 1.0 * (y == 2)  # class 2 in feature 1
    x[:, 5] = 3.25  # constant
    return x.astype(np.float32), y


def main():
    xt, yt = draw(N_TRAIN)
    xv, yv = draw(N_TEST)
    x64 = xt.astype(np.float64)
    mean = x64.mean(0)
    std = x64.std(0)
    std[std == 0] = 1.0
    z = np.hstack([(x64 - mean) / std, np.ones((N_TRAIN, 1))])
    t = np.eye(CLASSES)[yt]
    penalty = LAMBDA * np.eye(D + 1)
    penalty[D, D] = 0.0  # the bias is not penalized
    w = np.linalg.solve(z.T @ z + penalty, z.T @ t)
    zv = np.hstack([(xv.astype(np.float64) - mean) / std, np.ones((N_TEST, 1))])
    scores = zv @ w
    pred = scores.argmax(1)
    counts = np.bincount(yt, minlength=CLASSES)
    golden = {
        "classes": CLASSES, "lambda": LAMBDA,
        "train_x": xt.tolist(), "train_y": yt.tolist(), "test_x": xv.tolist(), "test_y": yv.tolist(),
        "test_scores": scores.tolist(), "test_accuracy": float((pred == yv).mean()),
        "majority": float((yv == counts.argmax()).mean()),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(golden, f, indent=1)
    print(f"wrote {OUT}: test accuracy {golden['test_accuracy']:.3f}, majority {golden['majority']:.3f}")


if __name__ == "__main__":
    main()
