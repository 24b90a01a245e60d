"""Input pipelines: the paper's datasets as normalized, batched `tf.data` splits.

```python
from bisam_keras import data

splits = data.load("cifar10", data_dir="/data/cifar10", batch_size=128)
model.fit(splits.train, validation_data=splits.validation, epochs=200)
```

`load` splits the training set 90/10 into train and validation (fixed seed),
optionally corrupts a fraction of the *train* labels (Appendix A.3),
normalizes every split with the train part's per-channel mean and std, and
augments the train part only. Datasets come from tfds, from scikit-learn
(`"digits"`, always available offline) or from an offline folder.

Offline format (`data_dir=`): a folder holding

- `train-*.tfrecord` and `test-*.tfrecord`, read in sorted file-name order;
- `classes.txt`: one class name per line, line `i` naming label `i`;

where each record is a `tf.train.Example` with the features `image` (bytes: a
JPEG or PNG encoded image) and `label` (int64 in `[0, number of classes)`).
`write_tfrecord_folder(path, images, labels, class_names, split=..., shards=...)`
writes one; see `docs/offline-data.md`.

ImageNet (`"imagenet2012"`) cannot be downloaded automatically: register at
https://image-net.org, put `ILSVRC2012_img_train.tar` and
`ILSVRC2012_img_val.tar` into `<tfds_dir>/downloads/manual/` and call
`load("imagenet2012", tfds_dir=...)`; the first call prepares it (hours).
Without network, tfds datasets that are not prepared raise
`DatasetUnavailableError` at once: use `data_dir=` with an offline folder.
"""

from bisam_keras.data.arrays import from_arrays
from bisam_keras.data.augment import (
    cifar_augment,
    cutout,
    imagenet_eval_preprocess,
    imagenet_train_preprocess,
)
from bisam_keras.data.catalog import names
from bisam_keras.data.errors import DataError
from bisam_keras.data.loading import load
from bisam_keras.data.offline import read_tfrecord_folder, write_tfrecord_folder
from bisam_keras.data.pipeline import Splits
from bisam_keras.data.splitting import (
    authors_validation_split,
    corrupt_labels,
    train_validation_split,
)
from bisam_keras.data.stats import channel_stats, normalize
from bisam_keras.data.tfds_source import DatasetUnavailableError

__all__ = [
    "DataError",
    "DatasetUnavailableError",
    "Splits",
    "authors_validation_split",
    "channel_stats",
    "cifar_augment",
    "corrupt_labels",
    "cutout",
    "from_arrays",
    "imagenet_eval_preprocess",
    "imagenet_train_preprocess",
    "load",
    "names",
    "normalize",
    "read_tfrecord_folder",
    "train_validation_split",
    "write_tfrecord_folder",
]
