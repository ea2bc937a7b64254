"""The variational autoencoder of 变分自编码器（一）：原来是这么一回事 (kexue.fm/archives/5253), in Keras 3.

Copy this file alone into a project: it needs only ``keras`` and ``numpy`` and computes with
``keras.ops``, so it runs on TensorFlow, JAX and PyTorch.

The article's symbols. A sample X (an image), a latent Z. The encoder gives the posterior of each
sample, a diagonal Gaussian p(Z|X) = N(mu(X), sigma^2(X)), predicting log sigma^2 rather than sigma^2 so
that it may be negative; the prior is p(Z) = N(0, I); the decoder gives p(X|Z), independent Bernoullis
with means X_hat(Z) (the sigmoid outputs). Training minimises, per sample,

    L(X) = E_{Z ~ p(Z|X)} [ -log p(X|Z) ] + KL( p(Z|X) || p(Z) ),

the negative evidence lower bound (ELBO) of log p(X). The first term is the binary cross-entropy
summed over the pixels (``bernoulli_nll``); the second has the closed form (``gaussian_kl``)

    KL( N(mu, sigma^2) || N(0, I) ) = 1/2 sum_i ( mu_i^2 + sigma_i^2 - log sigma_i^2 - 1 ).

The expectation is estimated with one sample per image drawn by the reparameterisation trick
(``Sampling``): Z = mu + sigma * eps, eps ~ N(0, I), so the gradient flows into mu and sigma.

The article's conditional variant (its ``cvae_keras.py``) keeps the decoder unconditioned and gives
every class Y its own prior mean mu_Y (learned: a Dense layer on the one-hot class), so that

    KL( N(mu, sigma^2) || N(mu_Y, I) ) = 1/2 sum_i ( (mu_i - mu_Y,i)^2 + sigma_i^2 - log sigma_i^2 - 1 ),

which is the standard KL with mu replaced by mu - mu_Y. Decoding around mu_Y then draws that class.

Training with plain ``compile()`` / ``fit()`` on every backend: ``KLDivergence`` adds the KL term with
``Layer.add_loss`` inside ``call`` and passes its inputs through, so it sits on the model's path;
``bernoulli_nll`` is the ``compile`` loss. Keras adds the two: the logged ``loss`` is the negative ELBO
per image, averaged over the batch (the article's ``K.mean(xent_loss + kl_loss)``)::

    x = keras.Input((784,))
    h = keras.layers.Dense(256, activation="relu")(x)
    z_mean, z_log_var = keras.layers.Dense(2)(h), keras.layers.Dense(2)(h)
    z_mean, z_log_var = KLDivergence()([z_mean, z_log_var])
    z = Sampling(seed=1)([z_mean, z_log_var])
    decoder = keras.Sequential([keras.Input((2,)), keras.layers.Dense(256, activation="relu"),
                                keras.layers.Dense(784, activation="sigmoid")])
    vae = keras.Model(x, decoder(z))
    vae.compile(optimizer="rmsprop", loss=bernoulli_nll)
    vae.fit(x_train, x_train, batch_size=100, epochs=50)

``log_importance_weights`` and ``iw_log_likelihood`` evaluate a trained model: the
importance-weighted bound (Burda et al., 2016) is a tighter estimate of log p(X) than the ELBO, and
approaches log p(X) as the number of samples k grows.
"""

import keras
import numpy as np
from keras import ops

EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1 - EPSILON], as Keras's binary cross-entropy does


def _as_float(x):
    """At least float32: log-variances and their exponentials are computed in float32 under float16
    policies."""
    x = ops.convert_to_tensor(x)
    return x if keras.backend.standardize_dtype(x.dtype) in ("float32", "float64") else ops.cast(x, "float32")


def gaussian_kl(mean, log_var, prior_mean=None):
    """KL( N(mean, exp(log_var)) || N(prior_mean, I) ), summed over the last axis.

    ``1/2 sum (( mean - prior_mean)^2 + exp(log_var) - log_var - 1)``; without ``prior_mean`` the prior is
    the standard normal N(0, I).

    Args:
        mean, log_var: the posterior's mean and log-variance, shape (..., d).
        prior_mean: the prior's mean (unit variance), broadcastable to ``mean``; None for 0.

    Returns:
        A tensor of shape (...,): one KL per sample, in nats.
    """
    mean, log_var = _as_float(mean), _as_float(log_var)
    diff = mean if prior_mean is None else mean - ops.cast(prior_mean, mean.dtype)
    return ops.sum(_kl_per_dimension(diff, log_var), axis=-1)


def _kl_per_dimension(diff, log_var):
    """1/2 ((mean - prior_mean)^2 + exp(log_var) - log_var - 1), each latent dimension apart."""
    return 0.5 * (ops.square(diff) + ops.exp(log_var) - log_var - 1.0)


@keras.saving.register_keras_serializable(package="kexue")
def bernoulli_nll(x, x_decoded):
    """-log p(X|Z) for Bernoulli pixels: the binary cross-entropy summed over every axis but the first.

    This is the article's ``original_dim * metrics.binary_crossentropy(x, x_decoded_mean)`` (784 times
    the mean over pixels), for images of any shape. ``x_decoded`` holds probabilities (the sigmoid
    outputs), clipped to [1e-7, 1 - 1e-7] as Keras's binary cross-entropy clips them; a value outside
    [0, 1] (logits: a forgotten sigmoid) is not a probability, and its sample gets NaN.

    Use it as the ``compile`` loss; Keras averages it over the batch.

    Args:
        x: the images, values in [0, 1] (MNIST / 255), shape (batch, ...).
        x_decoded: the decoder's probabilities, the same shape.

    Returns:
        A tensor of shape (batch,), in nats. A sample whose ``x`` has a value outside [0, 1] (images
        not divided by 255, say) gets NaN, so the logged loss is NaN rather than a wrong number: the
        binary cross-entropy of such a value is not a likelihood and can go negative. Check the data
        before training (``check_images``).

    Raises:
        ValueError: the two shapes differ, batch included (known before any data flows; a batch of 1
            would otherwise broadcast against the other).
    """
    x_decoded = _as_float(x_decoded)
    x = ops.cast(x, x_decoded.dtype)
    if len(x.shape) != len(x_decoded.shape) or any(
        a is not None and b is not None and a != b for a, b in zip(x.shape, x_decoded.shape)
    ):
        raise ValueError(
            f"bernoulli_nll: the images have shape {tuple(x.shape)} but the decoder gives {tuple(x_decoded.shape)}; "
            "they must match (reshape the images or the decoder's output)"
        )
    p = ops.clip(x_decoded, EPSILON, 1.0 - EPSILON)
    terms = x * ops.log(p) + (1.0 - x) * ops.log(1.0 - p)
    axes = tuple(range(1, len(x.shape)))
    nll = -ops.sum(terms, axis=axes) if axes else -terms
    # x and x_decoded both in [0, 1] (False for NaN): anything else is not a likelihood, and clipping
    # logits to [1e-7, 1 - 1e-7] would give a confident wrong number
    inside = ops.logical_and(ops.logical_and(x >= 0.0, x <= 1.0), ops.logical_and(x_decoded >= 0.0, x_decoded <= 1.0))
    valid = ops.all(inside, axis=axes) if axes else inside
    return ops.where(valid, nll, ops.full_like(nll, float("nan")))


def check_images(x, name="images"):
    """Raise a ValueError naming the first value outside [0, 1] (or NaN) in ``x``; return ``x``.

    ``bernoulli_nll`` reads pixels as probabilities; call this on the data before ``fit`` (a loss
    cannot raise from inside a compiled training step: there it returns NaN). A check of host data,
    so NumPy."""
    values = np.asarray(x)
    bad = ~((values >= 0) & (values <= 1))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name}: value {float(values[where])!r} at index {where} is outside [0, 1] "
            f"({int(bad.sum())} such values); the Bernoulli decoder reads pixels as probabilities: "
            "divide 8-bit images by 255"
        )
    return x


def _pair_shapes(layer, inputs, names):
    if (
        not isinstance(inputs, (list, tuple))
        or len(inputs) not in (2, len(names))
        or not all(isinstance(s, (list, tuple)) for s in inputs)  # a single tensor's shape is a tuple of ints
    ):
        several = isinstance(inputs, (list, tuple)) and all(isinstance(s, (list, tuple)) for s in inputs)
        got = f"{len(inputs)} tensors" if several else "one tensor"
        expected = f"[{', '.join(names)}]" if len(names) == 2 else f"[{', '.join(names[:2])}] or [{', '.join(names)}]"
        raise ValueError(f"{layer}: expects a list {expected}, got {got}")
    shapes = [tuple(s) for s in inputs]
    if len(shapes[0]) != 2:
        raise ValueError(
            f"{layer}: {names[0]} must be (batch, d), got shape {shapes[0]}; flatten the latents to one vector "
            "per sample"
        )
    if len(shapes[0]) != len(shapes[1]) or any(
        a is not None and b is not None and a != b for a, b in zip(shapes[0], shapes[1])
    ):
        raise ValueError(
            f"{layer}: {names[0]} has shape {shapes[0]} but {names[1]} has shape {shapes[1]}; they must match "
            "(one log-variance per latent dimension)"
        )
    if len(shapes) == 3 and shapes[2][-1:] != shapes[0][-1:]:
        raise ValueError(
            f"{layer}: {names[2]} has shape {shapes[2]} but {names[0]} has shape {shapes[0]}; the prior mean needs "
            "one value per latent dimension"
        )
    if len(shapes) == 3 and len(shapes[2]) == 2 and None not in (shapes[0][0], shapes[2][0]):
        if shapes[2][0] != shapes[0][0]:
            raise ValueError(
                f"{layer}: {names[2]} has shape {shapes[2]} but {names[0]} has shape {shapes[0]}; give one prior mean "
                "per sample, or one of shape (d,) for all"
            )
    return shapes


@keras.saving.register_keras_serializable(package="kexue")
class Sampling(keras.layers.Layer):
    """The reparameterisation trick: Z = mu + exp(log_var / 2) * eps, eps ~ N(0, I).

    The noise comes from a ``keras.random.SeedGenerator``: with a ``seed`` the draws repeat from run
    to run, and the generator's state is a variable of the layer, saved and restored with the model.
    The layer samples in training and in inference alike (as the article's ``Lambda`` layer does):
    ``evaluate`` then reports the same one-sample loss as ``fit``. Decode ``z_mean`` for a
    deterministic reconstruction.

    Args:
        seed: int or None (then the draws differ on every run).

    Call arguments:
        inputs: ``[z_mean, z_log_var]``, two tensors of the same shape (batch, d) (other ranks or
            shapes are a ValueError); integer inputs become floats.

    Returns:
        Z, shape (batch, d), the dtype of ``z_mean``.
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool)):
            raise ValueError(f"Sampling: seed must be an int or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def build(self, input_shape):
        _pair_shapes("Sampling", input_shape, ("z_mean", "z_log_var"))

    def call(self, inputs):
        _pair_shapes("Sampling", [tuple(t.shape) for t in inputs], ("z_mean", "z_log_var"))
        z_mean, z_log_var = inputs[0], inputs[1]
        if not keras.backend.is_float_dtype(z_mean.dtype):  # a normal draw of an int dtype is refused
            z_mean = ops.cast(z_mean, self.compute_dtype)
        eps = keras.random.normal(ops.shape(z_mean), dtype=z_mean.dtype, seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * ops.cast(z_log_var, z_mean.dtype)) * eps

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    # Keras saves a layer's weights but not its random generators' states; these two add it, so that
    # a reloaded model goes on with the same draws.
    def save_own_variables(self, store):
        super().save_own_variables(store)
        store["seed_generator_state"] = ops.convert_to_numpy(self.seed_generator.state)

    def load_own_variables(self, store):
        if "seed_generator_state" in store:
            self.seed_generator.state.assign(store["seed_generator_state"])
        super().load_own_variables({key: store[key] for key in store.keys() if key != "seed_generator_state"})

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="kexue")
class KLDivergence(keras.layers.Layer):
    """Adds ``weight * KL( p(Z|X) || prior )``, averaged over the batch, to the model's losses, and
    passes its inputs through unchanged (so that it lies on the path from the model's inputs to its
    outputs, which is what makes Keras call it).

    The prior is N(0, I), or N(mu_Y, I) when a third input gives a per-sample prior mean (the
    article's CVAE: ``mu_Y = Dense(d)(one_hot_class)``). See ``gaussian_kl`` for the formula.

    Args:
        weight: the KL's weight in the loss (the article's 1; below 1 gives a beta-VAE, 0 an
            autoencoder with noise). A float >= 0. It is kept in a non-trainable variable,
            ``kl_weight``, so that a callback may change it during training (KL annealing:
            ``layer.kl_weight.assign(w)``); compiled steps read the current value.
        free_bits: lambda >= 0, nats per latent dimension (Kingma et al. 2016, "Improved variational
            inference with inverse autoregressive flow"): the loss counts each dimension's
            batch-mean KL as at least lambda, sum_i max(lambda, mean_batch KL_i), so the optimiser
            gains nothing by pushing a dimension's KL below lambda (against posterior collapse). 0 (the
            default) is the plain KL. The KL itself is unchanged: evaluate it with ``gaussian_kl``.

    Call arguments:
        inputs: ``[z_mean, z_log_var]`` or ``[z_mean, z_log_var, prior_mean]``, each (batch, d) (other
            ranks, and batches that differ, are a ValueError; ``prior_mean`` may also be (d,)). An empty
            batch adds 0.

    Returns:
        The inputs, unchanged, as a list.
    """

    def __init__(self, weight=1.0, free_bits=0.0, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("weight", weight), ("free_bits", free_bits)):
            number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            if not number or not value >= 0 or value == np.inf:
                raise ValueError(f"KLDivergence: {name} must be a finite float >= 0, got {value!r}")
        self.weight, self.free_bits = float(weight), float(free_bits)

    def build(self, input_shape):
        _pair_shapes("KLDivergence", input_shape, ("z_mean", "z_log_var", "prior_mean"))
        self.kl_weight = self.add_weight(
            name="kl_weight", shape=(), initializer=keras.initializers.Constant(self.weight), trainable=False
        )

    def call(self, inputs):
        _pair_shapes("KLDivergence", [tuple(t.shape) for t in inputs], ("z_mean", "z_log_var", "prior_mean"))
        mean, log_var = _as_float(inputs[0]), _as_float(inputs[1])
        if len(inputs) == 3:
            mean = mean - ops.cast(inputs[2], mean.dtype)
        # the batch mean as sum / max(batch, 1): an empty batch adds 0, not a mean over nothing (NaN)
        count = ops.cast(ops.shape(mean)[0], mean.dtype)
        if self.free_bits > 0:  # per dimension, batch mean, floored at lambda
            per_dim = ops.sum(_kl_per_dimension(mean, log_var), axis=0) / ops.maximum(count, 1.0)
            kl = ops.sum(ops.maximum(per_dim, self.free_bits)) * ops.minimum(count, 1.0)
        else:
            kl = ops.sum(gaussian_kl(mean, log_var)) / ops.maximum(count, 1.0)
        self.add_loss(ops.cast(self.kl_weight, kl.dtype) * kl)
        return list(inputs)

    def compute_output_shape(self, input_shape):
        return [tuple(s) for s in input_shape]

    def load_own_variables(self, store):
        if len(store.keys()) == 0:  # saved before the layer had ``kl_weight``: it starts at ``weight``
            return
        super().load_own_variables(store)

    def get_config(self):
        return {**super().get_config(), "weight": self.weight, "free_bits": self.free_bits}


def gaussian_log_density(z, mean, log_var=None):
    """log N(z; mean, exp(log_var)), summed over the last axis (unit variance without ``log_var``)."""
    z = _as_float(z)
    mean = ops.cast(mean, z.dtype)
    log_var = ops.zeros_like(z) if log_var is None else ops.cast(log_var, z.dtype)
    terms = ops.square(z - mean) * ops.exp(-log_var) + log_var + float(np.log(2.0 * np.pi))
    return -0.5 * ops.sum(terms, axis=-1)


def log_importance_weights(decoder, x, z_mean, z_log_var, k, *, prior_mean=None, seed=None, return_log_px=False):
    """log w_j = log p(X|Z_j) + log p(Z_j) - log q(Z_j|X) for k draws Z_j ~ q(Z|X) per sample.

    ``mean_j log w_j`` estimates the ELBO (its negative is the loss); ``iw_log_likelihood`` turns the
    weights into the importance-weighted bound, log (1/k) sum_j w_j.

    Args:
        decoder: a callable (a Keras model) from latents (n, d) to probabilities shaped like ``x``.
        x: the images, (batch, ...) in [0, 1].
        z_mean, z_log_var: the encoder's outputs for ``x``, (batch, d).
        k: draws per sample, an int >= 1.
        prior_mean: the prior's mean, broadcastable to (batch, d) (the CVAE's mu_Y); None for 0.
        seed: an int, a ``keras.random.SeedGenerator`` or None.
        return_log_px: also return the reconstruction part, log p(X|Z_j).

    Returns:
        A float32 tensor of shape (batch, k); with ``return_log_px``, a pair (log w, log p(X|Z)).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"log_importance_weights: k must be an int >= 1, got {k!r}")
    k = int(k)
    z_mean, z_log_var = _as_float(z_mean), _as_float(z_log_var)
    batch, dim = ops.shape(z_mean)[0], ops.shape(z_mean)[1]
    eps = keras.random.normal((batch, k, dim), dtype=z_mean.dtype, seed=seed)
    mean, log_var = z_mean[:, None, :], z_log_var[:, None, :]
    z = mean + ops.exp(0.5 * log_var) * eps
    decoded = decoder(ops.reshape(z, (-1, dim)))
    x_rep = ops.repeat(ops.convert_to_tensor(x), k, axis=0)  # sample i's row repeated k times, as z is laid out
    log_px = -ops.reshape(bernoulli_nll(x_rep, decoded), (-1, k))
    prior = ops.zeros_like(mean) if prior_mean is None else ops.expand_dims(_as_float(prior_mean), -2)
    log_pz = gaussian_log_density(z, prior)
    # log q(z|x) from the draw itself: (z - mean)^2 exp(-log_var) is eps^2, but computed that way it is
    # 0 * inf = NaN for a confident posterior (log_var below about -88 in float32)
    log_qz = -0.5 * ops.sum(ops.square(eps) + log_var + float(np.log(2.0 * np.pi)), axis=-1)
    log_w = log_px + log_pz - log_qz
    return (log_w, log_px) if return_log_px else log_w


def iw_log_likelihood(log_weights):
    """The importance-weighted bound log (1/k) sum_j w_j per sample, from ``log_importance_weights``
    (shape (batch, k)); a NumPy float64 array of shape (batch,). It is at least the ELBO estimate
    ``mean_j log w_j`` and grows towards log p(X) with k. Computed on the host in float64 (a final
    reduction of evaluation results, not part of a model)."""
    lw = np.asarray(keras.ops.convert_to_numpy(log_weights), dtype="float64")
    top = lw.max(axis=1, keepdims=True)
    return (top + np.log(np.mean(np.exp(lw - top), axis=1, keepdims=True)))[:, 0]
