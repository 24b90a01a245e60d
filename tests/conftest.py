"""Test-session setup: two logical CPU devices for the tf.distribute tests.

Logical devices must be configured before TensorFlow initializes its runtime,
so this runs when pytest imports the tests. The default strategy still uses
one device; only tests that open a `MirroredStrategy` see both.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
