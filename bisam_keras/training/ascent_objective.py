"""The ascent objective of a compiled model, output by output.

```
A(w) = sum_o loss_weight_o * A_o(y_true_o, y_pred_o, sample_weight_o)
```

`A_o` is the optimizer's objective for output `o`, derived from the loss the
output is compiled with (`SharpnessAwareOptimizer.output_objective`: BiSAM's
lower bound `Q` of that output), and `loss_weight_o` its compiled
`loss_weights`. Outputs compiled without a loss take no part, as in the
compiled loss. The outputs, labels, sample weights, losses and loss weights are
matched as `keras.Model.compile` matches them: one loss for every output, a
list by position (a dict's outputs in sorted-key order, as `keras.tree`
flattens them), a dict by output name.
"""


def build(optimizer, loss, loss_weights=None):
    """The `AscentObjective` of a model compiled with `loss`, or `None`.

    Args:
        optimizer: the `SharpnessAwareOptimizer` (its `output_objective`).
        loss: `compile`'s `loss`: one loss, a list or a dict of them, or `None`.
        loss_weights: `compile`'s `loss_weights`. Defaults to `None`.

    Returns:
        An `AscentObjective`, or `None` when the optimizer has no objective of
        its own for the outputs (SAM: the compiled loss is the objective).

    Raises:
        ValueError: from `output_objective`, for an output that the optimizer
            cannot climb (BiSAM and a regression loss).
    """
    if isinstance(loss, dict):
        objectives = {
            name: None if leaf is None else optimizer.output_objective(leaf, output=name)
            for name, leaf in loss.items()
        }
        leaves = list(objectives.values())
    elif isinstance(loss, (list, tuple)):
        objectives = [
            None if leaf is None else optimizer.output_objective(leaf, output=index)
            for index, leaf in enumerate(loss)
        ]
        leaves = objectives
    else:
        objectives = optimizer.output_objective(loss)
        leaves = [objectives]
    if all(leaf is None for leaf in leaves):
        return None
    return AscentObjective(objectives, loss_weights)


def _is_nested(structure):
    return isinstance(structure, (dict, list, tuple))


class AscentObjective:
    """`sum_o loss_weight_o * A_o`: the objectives of a model's outputs.

    Args:
        objectives: the per-output `keras.losses.Loss` objects (or `None`), in
            the structure of `compile`'s `loss`.
        loss_weights: `compile`'s `loss_weights`, or `None` for 1.
    """

    def __init__(self, objectives, loss_weights=None):
        self.objectives = objectives
        self.loss_weights = loss_weights

    def value(self, y_true, y_pred, sample_weight=None, output_names=None):
        """The weighted sum of the outputs' objectives: a scalar."""
        total = None
        for objective, weight, y_t, y_p, s_w in self._entries(
            y_true, y_pred, sample_weight, output_names
        ):
            value = objective(y_t, y_p, sample_weight=s_w)
            value = value if weight is None else value * weight
            total = value if total is None else total + value
        return total

    def per_example(self, y_true, y_pred, output_names=None):
        """The weighted sum of the outputs' per-example objectives, `(batch,)`."""
        total = None
        for objective, weight, y_t, y_p, _ in self._entries(y_true, y_pred, None, output_names):
            value = objective.per_example(y_t, y_p)
            value = value if weight is None else value * weight
            total = value if total is None else total + value
        return total

    # ------------------------------------------------------------ matching
    def _entries(self, y_true, y_pred, sample_weight, output_names):
        """`[(objective, weight, y_true_o, y_pred_o, sample_weight_o)]` of the outputs with one."""
        if isinstance(y_pred, dict):
            keys = list(y_pred)
            names = keys
        elif isinstance(y_pred, (list, tuple)):
            keys = list(range(len(y_pred)))
            names = list(output_names) if output_names else [None] * len(keys)
            if len(names) != len(keys):
                names = [None] * len(keys)
        else:
            keys, names = [None], [output_names[0] if output_names else None]
        order = sorted(keys) if isinstance(y_pred, dict) else keys
        entries = []
        for key, name in zip(keys, names):
            objective = self._pick(self.objectives, key, name, order, "loss")
            if objective is None:
                continue
            weight = self._pick(self.loss_weights, key, name, order, "loss_weights")
            y_p = y_pred if key is None else y_pred[key]
            if _is_nested(y_p):
                raise ValueError(
                    "The ascent objective takes one tensor per output; nested output "
                    f"structures are not supported. Received: the output {name or key!r} "
                    f"of type {type(y_p).__name__}"
                )
            y_t = self._labels_of(y_true, key, name, order, len(keys))
            s_w = sample_weight
            if _is_nested(sample_weight):
                s_w = self._labels_of(sample_weight, key, name, order, len(keys))
            entries.append((objective, weight, y_t, y_p, s_w))
        if not entries:
            raise ValueError(
                "No output of the model has a loss to derive the ascent objective from. "
                f"Received: outputs {names}, loss structure {self.objectives!r}"
            )
        return entries

    @staticmethod
    def _pick(structure, key, name, order, what):
        """The element of `loss` (or `loss_weights`) that belongs to one output."""
        if not _is_nested(structure):
            return structure  # one for every output
        if isinstance(structure, dict):
            if name is not None and name in structure:
                return structure[name]
            if isinstance(key, str) and key in structure:
                return structure[key]
            if key is None and len(structure) == 1:
                return next(iter(structure.values()))
            if what == "loss":
                return None  # an output without a loss
            raise ValueError(
                f"`{what}` has no entry for the output {name or key!r}. "
                f"Received: {what}={structure!r}"
            )
        index = 0 if key is None else order.index(key)
        if index >= len(structure):
            raise ValueError(
                f"`{what}` has {len(structure)} entries, fewer than the model's outputs. "
                f"Received: {what}={structure!r}"
            )
        return structure[index]

    @staticmethod
    def _labels_of(y_true, key, name, order, count):
        """The labels (or sample weights) of one output."""
        if not _is_nested(y_true):
            if count == 1:
                return y_true
            raise ValueError(
                f"The model has {count} outputs: `y` (and a nested `sample_weight`) must "
                "hold one entry per output, as a dict by output name or a list. "
                f"Received: y of type {type(y_true).__name__}"
            )
        if isinstance(y_true, dict):
            for candidate in (name, key):
                if candidate is not None and candidate in y_true:
                    return y_true[candidate]
            if key is None and len(y_true) == 1:
                return next(iter(y_true.values()))
            raise ValueError(
                f"`y` has no labels for the output {name or key!r}. "
                f"Received: y with keys {sorted(y_true)}"
            )
        index = 0 if key is None else order.index(key)
        if index >= len(y_true):
            raise ValueError(
                f"`y` holds {len(y_true)} entries, fewer than the model's {count} outputs."
            )
        return y_true[index]
