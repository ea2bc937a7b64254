"""Capsules with dynamic routing, from 揭开迷雾，来一顿美味的Capsule盛宴 ("Capsules, demystified"), Su
Jianlin, https://kexue.fm/archives/4819 (2018-01-23), and its K-means reading, 再来一顿贺岁宴：从K-Means到
Capsule ("From K-means to capsules"), https://kexue.fm/archives/5112 (2018-02-12).

A capsule layer maps n input capsules ``u_i`` (vectors) to k output capsules ``v_j``. Each input votes
for each output through a matrix, ``û_{j|i} = W_j u_i`` (one ``W_j`` shared by every input, as in the
article's code, so any number of inputs works; or one ``W_ji`` per input, the paper's), and routing
decides how much each vote counts (``c_ij``, a softmax over the outputs j for each input i)::

    squash(x) = ||x||² / (C + ||x||²) · x / ||x||        (C = 1 in the paper, 0.5 in the article)

    paper (Sabour et al. 2017):    b = 0; repeat r times: c = softmax_j(b), v_j = squash(Σ_i c_ij û_{j|i}),
                                   b_ij += <û_{j|i}, v_j>
    article 4819:                  the same, but b_ij = <û_{j|i}, v_j> is REPLACED each iteration, not
                                   accumulated (accumulating drives c to one-hot as r grows), C = 0.5
    K-means, 5112:                 o_j = Σ_i c_ij û_{j|i}; between iterations only normalise,
                                   b_ij = <û_{j|i}, o_j / ||o_j||>; squash once, at the end

The 5112 article derives routing as K-means clustering of the votes with the softened minimum and the
distance ``-<u, v/||v||>``: ``c`` are soft assignments, ``o_j`` the cluster centres, and squashing
inside the loop only distorts the centres.

The capsule's length is its class score, trained with the margin loss
``y·relu(0.9 - p)² + 0.25·(1 - y)·relu(p - 0.1)²`` per class (summed over classes here, as in the
paper; the article's code let Keras average it over the classes: the same gradient directions, a tenth
of the size).

This file imports only keras and numpy, uses ``keras.ops``, and runs on TensorFlow (with or without
XLA: the routing loop is unrolled in Python), JAX and PyTorch.
"""

import keras
import numpy as np
from keras import ops

__all__ = ["squash", "Capsule", "CapsuleLength", "margin_loss", "ROUTINGS"]

ROUTINGS = ("paper", "article", "kmeans")


def _positive_int(name, value, where):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _check_constant(constant, where, name="constant"):
    """A finite number at least float32's smallest normal number: below it, ``C + ||x||²`` underflows
    to 0 for a zero capsule and squash gives 0 / 0 = NaN. A tensor is taken as it is."""
    if ops.is_tensor(constant):
        return constant
    if (
        isinstance(constant, bool)
        or not isinstance(constant, (int, float, np.integer, np.floating))
        or not np.isfinite(constant)
        or not constant >= np.finfo("float32").tiny
    ):
        raise ValueError(
            f"{where}: {name} must be > 0 and finite, at least {np.finfo('float32').tiny:.3g} "
            f"(float32's smallest normal number, below which a zero capsule squashes to NaN), got {constant!r}"
        )
    return float(constant)


def _wide(x):
    """``x`` as a tensor of at least float32 (ints and 16-bit floats are widened), and its original dtype."""
    x = ops.convert_to_tensor(x)
    dtype = keras.backend.standardize_dtype(x.dtype)
    if dtype not in ("float32", "float64"):
        x = ops.cast(x, "float32")
    return x, dtype


def _norm_and_direction(x, axis):
    """``(||x||, x / ||x||)`` along ``axis`` (kept), exact at every scale of a float type.

    The direction comes from ``y = x / 2^k`` with ``2^k`` near ``max|x|``, whose squares neither overflow
    (``||x||²`` does beyond about 1.8e19 in float32) nor underflow (below about 1e-19). A power of two
    divides exactly, and its exponent is kept within ``±(maxexp - 8)`` because XLA turns the division
    into a product with ``2^-k``, which must stay a normal number. The scale is held constant: the
    direction does not depend on it. The norm is ``<x, direction>`` with the direction held constant:
    the same number, and its gradient is exactly the direction, with no factor ``2^-k`` to overflow for
    tiny ``x``. A vector below the smallest normal number (zero, subnormals) gives 0 and 0 with zero
    gradients. A vector with one infinite entry points along it (its limit); with several, the
    direction is undetermined, and it is NaN, as with a NaN entry.
    """
    info = np.finfo(keras.backend.standardize_dtype(x.dtype))
    largest = ops.stop_gradient(ops.max(ops.abs(x), axis=axis, keepdims=True, initial=0.0))  # 0 if empty
    normal = largest >= float(info.tiny)  # False for NaN too: NaN then flows through y
    exponent = ops.floor(ops.log2(ops.where(normal, largest, ops.ones_like(largest))))
    limit = float(info.maxexp - 8)
    y = x / ops.power(ops.cast(2.0, x.dtype), ops.clip(exponent, -limit, limit))
    # an infinite entry: the limit, its sign there and 0 at the finite entries (NaN stays NaN), if it is alone
    infinite = ops.isinf(x)
    alone = ops.sum(ops.cast(infinite, x.dtype), axis=axis, keepdims=True) == 1
    at_infinity = ops.where(infinite, ops.sign(x), x * 0.0)
    at_infinity = ops.where(alone, at_infinity, ops.full_like(x, float("nan")))
    y = ops.where(ops.isinf(largest), at_infinity, y)
    # max|y| >= 2^-6 for a normal vector, so sum(y²) > 0; otherwise y is ~0, and the 1 keeps the root off 0
    n = ops.sqrt(ops.sum(ops.square(y), axis=axis, keepdims=True) + ops.cast(ops.logical_not(normal), x.dtype))
    direction = y / n
    return ops.sum(x * ops.stop_gradient(direction), axis=axis, keepdims=True), direction


@keras.saving.register_keras_serializable(package="kexue_capsule")
def squash(x, axis=-1, constant=1.0):
    """``||x||² / (constant + ||x||²) · x / ||x||`` along ``axis``: the direction of ``x`` with a length
    in [0, 1). ``constant`` is 1 in the paper, 0.5 in the article (its lengths rise faster).

    Exact to float precision, value and gradient, for every finite input: lengths up to the largest
    float (the squares are never formed: see ``_norm_and_direction``) and down to the smallest normal
    number; zero maps to zero with a zero gradient. Short vectors (``||x|| <= 1``) are computed as
    ``x · ||x|| / (C + ||x||²)``, long ones as ``direction / (1 + C / ||x||²)``, so that neither form
    meets an overflow or a vanishing factor. 16-bit and integer inputs are computed in float32 and
    returned in their dtype (floats) or float32 (ints). An infinite entry gives its limit (the unit
    vector along it) when it is the only one; NaN gives NaN.
    """
    constant = _check_constant(constant, "squash")
    x, dtype = _wide(x)
    rank = len(x.shape)
    if rank == 0:
        raise ValueError(f"squash: x must have at least one axis (a vector), got a scalar of shape {tuple(x.shape)}")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -rank <= axis < rank:
        raise ValueError(
            f"squash: axis must be an integer in [-{rank}, {rank}) for x of shape {tuple(x.shape)}, got {axis!r}"
        )
    norm, direction = _norm_and_direction(x, axis)
    short = norm <= 1.0
    one = ops.ones_like(norm)
    n_short = ops.where(short, norm, one)
    n_long = ops.where(short, one, ops.minimum(norm, 1e15))  # beyond 1e15 the length is 1 to float precision
    v_short = ops.where(short, x, ops.zeros_like(x)) * (n_short / (constant + ops.square(n_short)))
    v_long = direction / (1.0 + constant / ops.square(n_long))
    v = ops.where(short, v_short, v_long)
    return v if dtype in ("float32", "float64") or not keras.backend.is_float_dtype(dtype) else ops.cast(v, dtype)


@keras.saving.register_keras_serializable(package="kexue_capsule")
class Capsule(keras.layers.Layer):
    """A capsule layer with dynamic routing.

    Args:
        num_capsule: output capsules k (e.g. 10 classes).
        dim_capsule: length of each output capsule.
        routings: routing iterations r (3 in the paper and the article; 1 means uniform coupling).
        share_weights: one matrix ``W_j`` per output capsule, shared by all inputs (the article's
            choice: the number of input capsules may change between calls, e.g. 28x28 then 56x28
            images); False gives one ``W_ji`` per input capsule (the paper's), which fixes n.
        routing: ``"article"`` (4819: logits replaced each iteration), ``"paper"`` (logits
            accumulated) or ``"kmeans"`` (5112: normalise inside the loop, squash at the end).
        squash_constant: the C of ``squash``; None means the routing's own: 1 for ``"paper"``, 0.5 for
            ``"article"`` and ``"kmeans"`` (the article's code for both).
        kernel_initializer, kernel_regularizer: for the vote matrices.

    Call: ``u`` (batch, n, d_in) -> ``v`` (batch, num_capsule, dim_capsule). With
    ``return_coupling=True`` also the last iteration's coupling coefficients ``c``, (batch, n,
    num_capsule), which sum to 1 over the output capsules.
    """

    def __init__(
        self,
        num_capsule,
        dim_capsule,
        routings=3,
        share_weights=True,
        routing="article",
        squash_constant=None,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_capsule = _positive_int("num_capsule", num_capsule, "Capsule")
        self.dim_capsule = _positive_int("dim_capsule", dim_capsule, "Capsule")
        self.routings = _positive_int("routings", routings, "Capsule")
        if routing not in ROUTINGS:
            raise ValueError(f"Capsule: routing must be one of {ROUTINGS}, got {routing!r}")
        if squash_constant is not None:
            squash_constant = _check_constant(squash_constant, "Capsule", "squash_constant")
        if not isinstance(share_weights, (bool, np.bool_)):  # "False" is truthy: it would mean True
            raise ValueError(f"Capsule: share_weights must be True or False, got {share_weights!r}")
        self.share_weights = bool(share_weights)
        self.routing = routing
        self.squash_constant = None if squash_constant is None else float(squash_constant)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    @property
    def constant(self):
        if self.squash_constant is not None:
            return self.squash_constant
        return 1.0 if self.routing == "paper" else 0.5

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                f"Capsule: input must be capsules (batch, n, dim) with a known dim, got {tuple(input_shape)}"
            )
        outputs = self.num_capsule * self.dim_capsule
        if self.share_weights:
            shape = (input_shape[-1], outputs)
        else:
            if input_shape[1] is None:
                raise ValueError(
                    "Capsule: share_weights=False needs a fixed number of input capsules; "
                    f"got input shape {tuple(input_shape)}"
                )
            shape = (input_shape[1], input_shape[-1], outputs)
        self.kernel = self.add_weight(
            name="kernel", shape=shape, initializer=self.kernel_initializer, regularizer=self.kernel_regularizer
        )

    def votes(self, u):
        """û_{j|i}: (batch, num_capsule, n, dim_capsule)."""
        if self.share_weights:
            u_hat = ops.matmul(u, self.kernel)  # the same W_j for every input i
        else:
            if u.shape[1] is not None and u.shape[1] != self.kernel.shape[0]:
                raise ValueError(
                    f"Capsule: built for {self.kernel.shape[0]} input capsules "
                    f"(share_weights=False), called with {u.shape[1]}"
                )
            u_hat = ops.einsum("bni,nio->bno", u, self.kernel)
        batch, n = ops.shape(u)[0], ops.shape(u)[1]
        u_hat = ops.reshape(u_hat, (batch, n, self.num_capsule, self.dim_capsule))
        return ops.transpose(u_hat, (0, 2, 1, 3))

    def call(self, u, return_coupling=False):
        if len(u.shape) != 3:
            raise ValueError(f"Capsule: input must be capsules (batch, n, dim), got shape {tuple(u.shape)}")
        if u.shape[-1] is not None and u.shape[-1] != self.kernel.shape[-2]:
            raise ValueError(
                f"Capsule: built for input capsules of size {self.kernel.shape[-2]}, called with shape {tuple(u.shape)}"
            )
        u = ops.cast(u, self.compute_dtype)
        u_hat = self.votes(u)
        # 16-bit policies: route in float32 (the tiny constants under the square roots underflow in float16)
        wide = keras.backend.standardize_dtype(u_hat.dtype) in ("float16", "bfloat16")
        if wide:
            u_hat = ops.cast(u_hat, "float32")
        b = ops.zeros_like(u_hat[..., 0])  # routing logits (batch, num_capsule, n)
        for i in range(self.routings):  # unrolled: r is small, and XLA compiles it
            # over the output capsules j, for each input i (one output capsule: c = 1)
            c = ops.softmax(b, axis=1) if self.num_capsule > 1 else ops.ones_like(b)
            s = ops.einsum("bjn,bjnd->bjd", c, u_hat)  # Σ_i c_ij û_{j|i}
            last = i == self.routings - 1
            if self.routing == "kmeans":
                if last:
                    v = squash(s, constant=self.constant)
                else:
                    _, centre = _norm_and_direction(s, -1)  # s / ||s||, 0 for s = 0
                    b = ops.einsum("bjd,bjnd->bjn", centre, u_hat)
            else:
                v = squash(s, constant=self.constant)
                if not last:
                    agreement = ops.einsum("bjd,bjnd->bjn", v, u_hat)  # <û_{j|i}, v_j>
                    b = b + agreement if self.routing == "paper" else agreement
        if wide:
            v, c = ops.cast(v, self.compute_dtype), ops.cast(c, self.compute_dtype)
        if return_coupling:
            return v, ops.transpose(c, (0, 2, 1))
        return v

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_capsule, self.dim_capsule)

    def compute_output_spec(self, u, return_coupling=False):
        v = keras.KerasTensor(self.compute_output_shape(u.shape), dtype=self.compute_dtype)
        if not return_coupling:
            return v
        return v, keras.KerasTensor((u.shape[0], u.shape[1], self.num_capsule), dtype=self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "num_capsule": self.num_capsule,
            "dim_capsule": self.dim_capsule,
            "routings": self.routings,
            "share_weights": self.share_weights,
            "routing": self.routing,
            "squash_constant": self.squash_constant,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        }


@keras.saving.register_keras_serializable(package="kexue_capsule")
class CapsuleLength(keras.layers.Layer):
    """The length of each capsule, (batch, k, d) -> (batch, k): the class scores of a capsule head.

    Exact at every scale (the squares are never formed, see ``_norm_and_direction``): 0 for a zero
    capsule, with a zero gradient; ``inf`` when an entry is infinite; NaN when one is NaN. 16-bit
    inputs are measured in float32 and returned in the layer's dtype.
    """

    def call(self, v):
        if len(v.shape) < 2:
            raise ValueError(f"CapsuleLength: input must be capsules (batch, ..., dim), got shape {tuple(v.shape)}")
        v, _ = _wide(v)
        length, _ = _norm_and_direction(v, -1)
        length = length[..., 0]
        infinite = ops.logical_and(ops.any(ops.isinf(v), axis=-1), ops.logical_not(ops.any(ops.isnan(v), axis=-1)))
        length = ops.where(infinite, ops.full_like(length, float("inf")), length)  # two infinities: still inf
        return ops.cast(length, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])


@keras.saving.register_keras_serializable(package="kexue_capsule")
def margin_loss(y_true, y_pred, m_plus=0.9, m_minus=0.1, down_weight=0.25):
    """``y·relu(m⁺ - p)² + λ·(1 - y)·relu(p - m⁻)²`` summed over classes, per sample: ``y_true`` one-hot
    (or multi-hot) (batch, k), ``y_pred`` scores in [0, 1] (capsule lengths or sigmoids). Scores outside
    give the formula's value (an infinite score: 0 for its own class, inf for another); NaN gives NaN.
    ``y_true`` of another shape (sparse labels) is an error; a ``y_true`` entry outside [0, 1] (a class
    index, not a one-hot) gives NaN for its sample. Integer scores are taken as floats."""
    y_pred = ops.convert_to_tensor(y_pred)
    if not keras.backend.is_float_dtype(y_pred.dtype):
        y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, y_pred.dtype)
    if len(y_true.shape) != len(y_pred.shape) or any(
        a is not None and b is not None and a != b for a, b in zip(y_true.shape, y_pred.shape)
    ):
        raise ValueError(
            f"margin_loss: y_true must be one-hot with {y_pred.shape[-1]} classes like y_pred (the same shape), "
            f"got shapes {tuple(y_true.shape)} and {tuple(y_pred.shape)}; one-hot encode class indices"
        )
    # a term whose weight is 0 is 0, even for an infinite score (not 0 * inf = NaN), gradient included
    p_present = ops.where(y_true > 0, y_pred, ops.full_like(y_pred, m_plus))
    p_absent = ops.where(y_true < 1, y_pred, ops.full_like(y_pred, m_minus))
    present = y_true * ops.square(ops.relu(m_plus - p_present))
    absent = down_weight * (1 - y_true) * ops.square(ops.relu(p_absent - m_minus))
    outside = ops.any(ops.logical_or(y_true < 0, y_true > 1), axis=-1)
    loss = ops.sum(present + absent, axis=-1)
    return ops.where(outside, ops.full_like(loss, float("nan")), loss)
