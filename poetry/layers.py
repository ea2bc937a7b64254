"""The gated convolution of 基于CNN和VAE的作诗机器人：随机成诗 (kexue.fm/archives/5332), in Keras 3.

Copy this file alone into a project: it needs only ``keras`` and ``numpy`` and computes with
``keras.ops``, so it runs on TensorFlow, JAX and PyTorch.

The article's poem generator is a VAE over 10-character couplets whose encoder and decoder are
gated convolutions (GCNN, after Dauphin et al. 2017, "Language modeling with gated convolutional
networks"). One convolution W (kernel 3, "same" padding, no bias) maps the sequence X (length n,
d channels) to 2m channels; the first m are the content A, the last m the gate B, and

    GCNN(X) = A * sigmoid(B),   [A | B] = conv1d(X, W),

so each position lets through a learned share of each content channel. With ``residual=True`` (what
the article uses in all three of its blocks) the input is added back, GCNN(X) + X, which needs
m = d.

The reconstruction term of the VAE's loss is the cross-entropy of the 10 characters summed over the
positions (``sequence_nll``): -log p(X|Z) = -sum_t log p(x_t | Z), the decoder predicting each
position independently given Z. The VAE pieces themselves (sampling, the KL term) are the ones of the
VAE article (``vae/layers.py`` in this repository)::

    x = keras.Input((10,), dtype="int32")
    h = keras.layers.Embedding(vocab_size, 64)(x)
    h = GCNN(residual=True)(GCNN(residual=True)(h))
    h = keras.layers.GlobalAveragePooling1D()(h)
    ... z_mean, z_log_var -> KLDivergence -> Sampling -> z ...
    h = keras.layers.Reshape((10, 64))(keras.layers.Dense(640)(z))
    logits = keras.layers.Dense(vocab_size)(GCNN(residual=True)(h))  # the article's softmax is in the loss
    vae.compile(optimizer="adam", loss=sequence_nll)
"""

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="kexue")
class GCNN(keras.layers.Layer):
    """Gated 1-D convolution: ``A * sigmoid(B)`` with ``[A | B] = conv1d(x, W)``, plus ``x`` when
    ``residual``.

    Args:
        output_dim: m, the output channels (None: the input's channels, as the article's default).
        kernel_size: the convolution's width (the article's 3), odd so that "same" padding centres it.
        residual: add the input to the output (the article's ``residual=True``); needs m equal to the
            input's channels.
        kernel_initializer: for W, shape (kernel_size, d, 2m) (the article's ``glorot_uniform``).

    Call arguments:
        inputs: (batch, n, d) floats.

    Returns:
        (batch, n, m).
    """

    def __init__(self, output_dim=None, kernel_size=3, residual=False, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        # bool is an int to Python: True would silently mean 1
        if output_dim is not None and (
            isinstance(output_dim, bool) or not isinstance(output_dim, (int, np.integer)) or output_dim < 1
        ):
            raise ValueError(f"GCNN: output_dim must be a positive int or None, got {output_dim!r}")
        if (
            isinstance(kernel_size, bool)
            or not isinstance(kernel_size, (int, np.integer))
            or kernel_size < 1
            or kernel_size % 2 == 0
        ):
            raise ValueError(f"GCNN: kernel_size must be a positive odd int, got {kernel_size!r}")
        if not isinstance(residual, (bool, np.bool_)):  # "False" is truthy: it would mean True
            raise ValueError(f"GCNN: residual must be True or False, got {residual!r}")
        self.output_dim = None if output_dim is None else int(output_dim)
        self.kernel_size = int(kernel_size)
        self.residual = bool(residual)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(f"GCNN: expects inputs (batch, length, channels) with known channels, got {input_shape}")
        channels = int(input_shape[-1])
        self.units = self.output_dim or channels
        if self.residual and self.units != channels:
            raise ValueError(
                f"GCNN: residual=True adds the input ({channels} channels) to the output ({self.units} channels); "
                "give output_dim=None or the input's channels, or residual=False"
            )
        self.kernel = self.add_weight(
            name="kernel", shape=(self.kernel_size, channels, 2 * self.units), initializer=self.kernel_initializer
        )

    def call(self, inputs):
        channels = self.kernel.shape[1]
        if len(inputs.shape) != 3 or (inputs.shape[-1] is not None and inputs.shape[-1] != channels):
            raise ValueError(
                f"GCNN: expects inputs (batch, length, {channels}) as when the layer was built, "
                f"got shape {tuple(inputs.shape)}"
            )
        if not keras.backend.is_float_dtype(inputs.dtype):  # an int kernel would be all zeros
            inputs = ops.cast(inputs, self.compute_dtype)
        if inputs.shape[1] == 0:  # nothing to convolve (PyTorch's conv refuses length 0)
            return ops.zeros((ops.shape(inputs)[0], 0, self.units), dtype=inputs.dtype)
        # [A | B] = conv1d(X, W); GCNN(X) = A * sigmoid(B)
        h = ops.conv(
            inputs, ops.cast(self.kernel, inputs.dtype), strides=1, padding="same", data_format="channels_last"
        )
        out = h[..., : self.units] * ops.sigmoid(h[..., self.units :])
        return out + inputs if self.residual else out

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.output_dim or input_shape[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "output_dim": self.output_dim,
            "kernel_size": self.kernel_size,
            "residual": self.residual,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }


@keras.saving.register_keras_serializable(package="kexue")
def sequence_nll(ids, logits):
    """-log p(X|Z) of a sequence of characters: the cross-entropy summed over the positions (the
    article's ``K.sum(K.sparse_categorical_crossentropy(x, out), 1)``).

    It takes the decoder's logits (a ``Dense(vocab_size)`` without softmax) and computes
    -sum_t log_softmax(logits_t)[x_t]: the article's softmax followed by the cross-entropy, in one
    step that neither overflows nor needs the clipping Keras applies to probabilities.

    Use it as the ``compile`` loss; Keras averages it over the batch.

    Args:
        ids: (batch, n) integer ids in [0, vocab_size).
        logits: (batch, n, vocab_size).

    Returns:
        (batch,), in nats. A sample with an id outside [0, vocab_size), or a non-integer id (Keras hands
        the loss float ids), gets NaN (a compiled step cannot raise; a gather would read a wrong value or
        fail deep inside, and a cast would truncate 2.5 to 2).
    """
    ids, logits = ops.convert_to_tensor(ids), ops.convert_to_tensor(logits)
    if (
        len(logits.shape) != 3
        or len(ids.shape) != 2
        or any(a is not None and b is not None and a != b for a, b in zip(ids.shape, logits.shape[:2]))
    ):
        raise ValueError(
            f"sequence_nll: expects ids (batch, n) and logits (batch, n, vocab_size), got {tuple(ids.shape)} and "
            f"{tuple(logits.shape)}"
        )
    if logits.shape[-1] == 0:
        raise ValueError(f"sequence_nll: logits {tuple(logits.shape)} have a vocabulary of 0 classes: nothing to pick")
    if keras.backend.standardize_dtype(ids.dtype) == "bool":
        ids = ops.cast(ids, "int32")  # ids 0 and 1 (TensorFlow compares no bools with ints)
    if keras.backend.standardize_dtype(logits.dtype) not in ("float32", "float64"):
        logits = ops.cast(logits, "float32")  # log-softmax in float32 under float16 policies
    vocab_size = logits.shape[-1]
    valid = ops.logical_and(ids >= 0, ids < vocab_size)
    if keras.backend.is_float_dtype(ids.dtype):
        valid = ops.logical_and(valid, ops.floor(ids) == ids)  # NaN fails this too
    valid = ops.all(valid, axis=-1)
    ids = ops.cast(ops.where(valid[:, None], ids, ops.zeros_like(ids)), "int32")  # NaN or inf must not be cast
    log_p = ops.log_softmax(logits, axis=-1)
    picked = ops.take_along_axis(log_p, ops.clip(ids, 0, vocab_size - 1)[..., None], axis=-1)[..., 0]
    nll = -ops.sum(picked, axis=-1)
    return ops.where(valid, nll, ops.full_like(nll, float("nan")))
