"""The error type of input data that cannot be used as it is."""


class DataError(ValueError):
    """Input data that cannot be used as it is.

    Raised for a truncated or corrupted TFRecord shard, a record that does not
    decode, a label outside `[0, num_classes)` or a request the data cannot
    meet (such as a `subset` larger than the training set). The message is one
    line that names the file, and the record where it is known, so that the
    command line can print it without a traceback.
    """
