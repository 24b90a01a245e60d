"""`SharpnessMonitor`: sharpness measures logged into `History` and TensorBoard during `fit`."""

import keras

from bisam_keras import sharpness
from bisam_keras.sharpness import checks

MEASURES = {
    "worst_case": sharpness.worst_case,
    "average_case": sharpness.average_case,
    "hessian_eigenvalues": sharpness.hessian_eigenvalues,
    "hessian_trace": sharpness.hessian_trace,
}
"""The measures a monitor can run, by the name its `measures` give in `"measure"`."""

DEFAULT_MEASURES = {"worst_case": {"measure": "worst_case", "rho": 0.05}}
"""What a monitor measures unless told otherwise: l2 worst-case sharpness, `rho=0.05`."""


def _check_measures(measures):
    if not isinstance(measures, dict) or not measures:
        raise ValueError(
            "`measures` must be a non-empty dict {name: {'measure': ..., **settings}}. "
            f"Received: measures={measures!r}"
        )
    for name, spec in measures.items():
        if not (isinstance(name, str) and name and isinstance(spec, dict)):
            raise ValueError(
                "`measures` must map names to dicts of settings. Received: "
                f"measures[{name!r}]={spec!r}"
            )
        checks.choice(f"measures[{name!r}]['measure']", spec.get("measure"), tuple(MEASURES))
        for reserved in ("model", "data", "num_examples", "seed"):
            if reserved in spec:
                raise ValueError(
                    f"`measures[{name!r}]` must not set {reserved!r}: the monitor fixes "
                    f"the data and the seed for every measure. Received: {spec!r}"
                )
    return {name: dict(spec) for name, spec in measures.items()}


class SharpnessMonitor(keras.callbacks.Callback):
    """Runs sharpness measures every `every_n_epochs` epochs and adds them to the logs.

    The values go into the epoch's `logs` as `"sharpness/<name>"` (a Hessian
    spectrum with `k > 1` as `"sharpness/<name>_1"` ... `"_k"`), so `History`
    records them and `keras.callbacks.TensorBoard` plots them in a
    `sharpness` section; list the monitor *before* `TensorBoard` in
    `callbacks`. As with Keras' `validation_freq`, the keys appear only in the
    epochs that are measured. The examples are chosen once, when the monitor
    is built: every epoch measures the same ones, with the same draws.

    Args:
        data: a `tf.data.Dataset` of `(x, y)` batches or a pair `(x, y)` of
            arrays, without augmentation.
        every_n_epochs: measure after every `every_n_epochs`-th epoch.
            Defaults to `1`.
        measures: `{name: {"measure": one of MEASURES, **settings}}`; the
            settings are those of the measure's function (`rho`, `ball`,
            `objective`, `k`, ...). Defaults to `DEFAULT_MEASURES`.
        num_examples: a fixed subset of this many examples, drawn by `seed`;
            `None` measures all. Defaults to `None`.
        seed: seeds the subset and every measure's draws. Defaults to `0`.

    Attributes:
        results: `{epoch: {name: result}}` (0-based epochs), the full results.

    Example:

    ```python
    monitor = bk.callbacks.SharpnessMonitor(
        (x_val, y_val),
        every_n_epochs=5,
        measures={
            "worst_case": {"measure": "worst_case", "rho": 0.05},
            "zero_one": {"measure": "worst_case", "rho": 0.05, "objective": "zero_one"},
            "top_eigenvalue": {"measure": "hessian_eigenvalues", "iterations": 10},
        },
        num_examples=512,
    )
    history = model.fit(train_ds, epochs=20, callbacks=[monitor, keras.callbacks.TensorBoard()])
    history.history["sharpness/zero_one"]
    ```
    """

    def __init__(self, data, every_n_epochs=1, measures=None, num_examples=None, seed=0):
        super().__init__()
        self.every_n_epochs = checks.positive_int("every_n_epochs", every_n_epochs)
        self.measures = _check_measures(DEFAULT_MEASURES if measures is None else measures)
        self.num_examples = checks.optional_positive_int("num_examples", num_examples)
        self.seed = checks.non_negative_int("seed", seed)
        self.examples = sharpness.select(data, num_examples, seed)
        self.results = {}

    def measure(self):
        """Runs every measure on the model now: `{log key: value}` and `{name: result}`."""
        values, results = {}, {}
        for name, spec in self.measures.items():
            settings = {key: value for key, value in spec.items() if key != "measure"}
            result = MEASURES[spec["measure"]](
                self.model, self.examples, seed=self.seed, **settings
            )
            results[name] = result
            if isinstance(result, sharpness.HessianEigenvalues):
                eigenvalues = result.eigenvalues
                if len(eigenvalues) == 1:
                    values[f"sharpness/{name}"] = eigenvalues[0]
                else:
                    for i, value in enumerate(eigenvalues):
                        values[f"sharpness/{name}_{i + 1}"] = value
            else:
                values[f"sharpness/{name}"] = result.value
        return values, results

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        values, self.results[epoch] = self.measure()
        if logs is not None:
            logs.update({key: float(value) for key, value in values.items()})

    def get_config(self):
        """The settings (not the data): `SharpnessMonitor(data, **config)` rebuilds it."""
        return {
            "every_n_epochs": self.every_n_epochs,
            "measures": {name: dict(spec) for name, spec in self.measures.items()},
            "num_examples": self.num_examples,
            "seed": self.seed,
        }
