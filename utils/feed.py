"""Feeding in-memory arrays to ``Model.fit`` / ``evaluate`` without tf.data's background threads.

Given NumPy arrays, Keras's TensorFlow trainer builds a tf.data pipeline with an autotuned prefetch and
a fresh iterator every epoch (and every validation pass). On our 2-core machines, destroying such an
iterator at the end of an epoch sometimes waited 10-25 s for a background thread, with the process
idle (seen with py-spy in ``IteratorResource::~IteratorResource``), which doubled some epochs' times.
For data that is already in memory the background work buys nothing, so on TensorFlow ``arrays``
gives a plain pipeline with autotuning off and no prefetch; the batches and their order are the same
kind Keras makes (a full reshuffle each epoch when ``shuffle``). Other backends get the arrays back:
their Keras trainers do not use tf.data for arrays.
"""

import keras


def arrays(x, y, *, batch_size, shuffle=False, seed=None):
    """Keyword arguments for ``fit``: ``model.fit(**arrays(x, y, batch_size=32, shuffle=True), epochs=...)``.
    ``seed`` fixes the shuffling on TensorFlow; other backends shuffle with Keras's own generator
    (seeded by ``keras.utils.set_random_seed``)."""
    if keras.backend.backend() != "tensorflow":
        return {"x": x, "y": y, "batch_size": batch_size, "shuffle": shuffle}
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((tuple(x) if isinstance(x, list) else x, y))
    if shuffle:
        n = len(x[0]) if isinstance(x, (tuple, list)) else len(x)  # several inputs: a tuple of arrays
        dataset = dataset.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    options.autotune.enabled = False
    return {"x": dataset.batch(batch_size).with_options(options), "shuffle": False}  # it shuffles itself


def validation(x, y, *, batch_size):
    """``validation_data`` for ``fit``: the pipeline above on TensorFlow, ``(x, y)`` elsewhere (then
    pass ``validation_batch_size``; Keras's default is the training batch size)."""
    if keras.backend.backend() != "tensorflow":
        return (x, y)
    return arrays(x, y, batch_size=batch_size)["x"]
