"""Train SGD, SAM and BiSAM on real data that works offline, and compare them.

The data is the handwritten-digits set bundled with scikit-learn (1,797 real
8x8 images, 10 classes), so this runs on a fresh machine with no network:

    python -m bisam_keras.examples.digits

It trains the same small CNN with each method from the same initial weights,
with a 90/10 train/validation split of the training part, and reports the
test accuracy of the epoch with the best validation accuracy (the paper's
protocol), plus the mean sharpness gap `perturbed_loss - loss`.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import bisam_keras as bk  # noqa: E402

METHODS = ("sgd", "sam", "bisam-neglog", "bisam-tanh")


def load_data(seed):
    """Digits as float32 8x8x1 images in [0, 1]: train, validation and test."""
    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    labels = digits.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(labels))
    images, labels = images[order], labels[order]
    n_test = len(labels) // 5
    n_val = (len(labels) - n_test) // 10
    test = images[:n_test], labels[:n_test]
    val = images[n_test : n_test + n_val], labels[n_test : n_test + n_val]
    train = images[n_test + n_val :], labels[n_test + n_val :]
    return train, val, test


def small_cnn(num_classes=10):
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Conv2D(64, 3, strides=2, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes),
        ],
        name="small_cnn",
    )


def make_optimizer(method, learning_rate, rho):
    inner = keras.optimizers.SGD(learning_rate, momentum=0.9, weight_decay=5e-4)
    if method == "sgd":
        return inner
    if method == "sam":
        return bk.SAM(inner, rho=rho)
    return bk.BiSAM(inner, rho=rho, lower_bound=method.split("-")[1])


def run(method, data, epochs, batch_size, learning_rate, rho, seed):
    """Trains one method and returns its protocol summary."""
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    inner = small_cnn()
    model = inner if method == "sgd" else bk.SharpnessAwareModel(inner)
    model.compile(
        optimizer=make_optimizer(method, learning_rate, rho),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    test_accuracy = []

    class TestAccuracy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logits = inner.predict(x_test, batch_size=512, verbose=0)
            test_accuracy.append(float(np.mean(np.argmax(logits, axis=-1) == y_test)))

    start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(x_val, y_val),
        callbacks=[TestAccuracy()],
        verbose=0,
    ).history
    seconds = time.perf_counter() - start
    best = int(np.argmax(history["val_accuracy"]))
    gap = None
    if "perturbed_loss" in history:
        gap = float(np.mean(np.subtract(history["perturbed_loss"], history["loss"])))
    return {
        "method": method,
        "best_epoch": best + 1,
        "val_accuracy": history["val_accuracy"][best],
        "test_accuracy": test_accuracy[best],
        "sharpness_gap": gap,
        "seconds": seconds,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    data = load_data(args.seed)
    print(
        f"digits: {len(data[0][1])} train / {len(data[1][1])} validation / "
        f"{len(data[2][1])} test images; {args.epochs} epochs per method"
    )
    print(f"{'method':<14}{'best epoch':>11}{'val acc':>9}{'test acc':>10}{'gap':>9}{'time':>8}")
    results = []
    for method in args.methods:
        r = run(method, data, args.epochs, args.batch_size, args.lr, args.rho, args.seed)
        gap = "-" if r["sharpness_gap"] is None else f"{r['sharpness_gap']:.4f}"
        print(
            f"{r['method']:<14}{r['best_epoch']:>11}{r['val_accuracy']:>9.4f}"
            f"{r['test_accuracy']:>10.4f}{gap:>9}{r['seconds']:>7.1f}s"
        )
        results.append(r)
    return results


if __name__ == "__main__":
    main()
