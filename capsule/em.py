"""Matrix capsules with EM routing, as 三味Capsule：矩阵Capsule与EM路由 ("Capsules, third course: matrix
capsules and EM routing"), Su Jianlin, https://kexue.fm/archives/5155 (2018-03-02), explains "Matrix
capsules with EM routing" (Hinton, Sabour, Frosst, ICLR 2018). The article derives the routing and
writes no code; this file is a Keras 3 implementation of it.

A capsule is a 4x4 pose matrix ``P`` (flattened to 16 numbers) and an activation ``a`` in (0, 1). A
child capsule ``i`` votes for a parent ``j`` through a learned 4x4 matrix, ``V_ij = P_i W_ij``, and
routing is clustering: each parent is a Gaussian with a diagonal covariance, fitted by EM to the votes
it receives, each vote weighted by its child's activation and its assignment ``R_ij`` (which sums to 1
over the parents a child votes for)::

    M-step   R'_ij = R_ij a_i;   μ_j = Σ_i R'_ij V_ij / Σ_i R'_ij;   σ_j² = Σ_i R'_ij (V_ij - μ_j)² / Σ_i R'_ij
             a_j = sigmoid(λ (β_a - cost_j))
    E-step   R_ij ∝ a_j N(V_ij; μ_j, σ_j²),  normalised over the parents j that child i votes for

The article reads the activation as a description length: the cost of parent j is the negative
log-likelihood of the data assigned to it under its own Gaussian. Summed over the d = 16 pose
dimensions, ``Σ_i R'_ij (-ln N(V_ij; μ_j, σ_j²)) = (d/2 + d/2·ln 2π + Σ_h ln σ_j^h) Σ_i R'_ij``, since
the squared deviations add up to exactly ``σ_j²`` each. Side by side (``cost=``):

    "article" (5155):   cost_j = (β_u + Σ_h ln σ_j^h + d/2 (1 + ln 2π)) · Σ_i R'_ij
    "paper" (Hinton):   cost_j = Σ_h (β_u + ln σ_j^h) · Σ_i R'_ij  =  (d β_u + Σ_h ln σ_j^h) · Σ_i R'_ij

The article says the paper's per-dimension cost drops the Gaussian's constant terms, so that it is not
the entropy it is meant to be; with learned β_u the two differ in how β_u enters (once, or once per
dimension) and in the fixed offset d/2 (1 + ln 2π). β_u and β_a are learned, one of each per parent
capsule type. λ, the inverse temperature, rises over the iterations with the schedule Hinton gave on
OpenReview, ``λ_t ∝ 1 - 0.95^(t+1)``, scaled here so that the last iteration uses
``inverse_temperature``.

By default (``normalise_cost=True``) each position's costs are standardised over the parent types
before the sigmoid (as in Guang Yang's implementation), so that activations compare a parent's fit
with its rivals' rather than depend on the poses' overall scale: with the cost as written, the MNIST
network of capsule/train.py did not learn (capsule/README.md gives the numbers).
``normalise_cost=False`` is the cost exactly as written.

Three implementation pitfalls named by Gritzman (2019, "Avoiding implementation pitfalls of matrix
capsules with EM routing", arXiv:1907.00652) and how this file deals with them:

1. *Parents at different positions compete for the same children.* In a convolutional capsule layer a
   child sits in the windows of several parent positions; its assignments are normalised over every
   parent of every window it is in (not window by window), and start uniform over those parents.
2. *Parents with a single child.* A Gaussian fitted to one vote (or to identical votes) has zero
   variance and ``ln σ = -∞``. Variances have a floor (``variance_floor``, added to every σ²), the
   routing works in log space (log-sigmoid activations, log-sum-exp normalisers, no square roots), so
   one child, identical votes or 16-bit inputs give finite poses, activations and gradients.
3. *Normalising the amount of data assigned to parents.* ``Σ_i R'_ij`` grows with the number of
   children (a class capsule sees every position; a larger image has more): the activation would
   saturate with the layer's size. With ``normalise_amount=True`` (the default) it is divided by the
   parent's fair share, the amount it would receive if every child were fully active and spread
   uniformly (``Σ_i R⁰_ij``), so costs are on the same scale in every layer and for every image size.

Layers: ``PrimaryCapsules`` (convolution to poses and sigmoid activations), ``ConvCapsules`` (kernel,
stride, transformation matrices shared across positions), ``ClassCapsules`` (one matrix per child
type and class, shared across positions, with coordinate addition), ``spread_loss`` / ``SpreadLoss``
and the ``MarginSchedule`` callback (margin 0.2 → 0.9 over training). ``em_routing`` is the routing
itself. Capsule layers take and return ``[poses, activations]``: poses (..., types, 16), activations
(..., types).

This file imports only keras and numpy, uses ``keras.ops``, and runs on TensorFlow (with or without
XLA: the iterations are unrolled in Python, the windows are gathers with constant indices), JAX and
PyTorch. The spatial size of a capsule layer's input must be known when it is built (give
``keras.Input`` a height and width); the weights do not depend on it, so a trained model's weights load
into one built for another image size.
"""

import keras
import numpy as np
from keras import ops

__all__ = [
    "em_routing",
    "PrimaryCapsules",
    "ConvCapsules",
    "ClassCapsules",
    "spread_loss",
    "SpreadLoss",
    "MarginSchedule",
    "COSTS",
]

COSTS = ("article", "paper")
_LOG_2PI = float(np.log(2.0 * np.pi))


def _positive_int(name, value, where):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _positive_float(name, value, where):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not (np.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{where}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_cost(cost, where):
    if cost not in COSTS:
        raise ValueError(f"{where}: cost must be one of {COSTS} (the article's or the paper's), got {cost!r}")
    return cost


def _log_floored(x, floor):
    """log(max(x, floor)), whose gradient is exactly 0 (not inf times 0 = NaN) where x <= floor."""
    above = x > floor
    return ops.where(above, ops.log(ops.where(above, x, ops.ones_like(x))), ops.full_like(x, np.log(floor)))


def _logsumexp(x, axis, keepdims=False):
    """log Σ exp(x) along ``axis``; -inf (not NaN) when every term is -inf."""
    m = ops.max(x, axis=axis, keepdims=True)
    m = ops.where(ops.isfinite(m), m, ops.zeros_like(m))
    m = ops.stop_gradient(m)
    out = ops.log(ops.sum(ops.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else ops.squeeze(out, axis=axis)


class _Plan:
    """What the routing needs to know about who votes for whom, as constant NumPy arrays.

    ``children`` (P, n) names the child of each vote slot (parent position p, slot s); slots that share
    a child compete for it together. ``None``: every slot is its own child (a class capsule layer)."""

    def __init__(self, children, positions, slots, parents):
        if children is None:
            self.inverse = None
            count = np.ones((positions, slots))
        else:
            children = np.asarray(children)
            if children.shape != (positions, slots) or children.dtype.kind not in "iu" or children.min() < 0:
                raise ValueError(
                    f"em_routing: children must be non-negative integers of shape {(positions, slots)} "
                    f"(one child id per parent position and vote slot), got {children.shape} {children.dtype}"
                )
            flat = children.reshape(-1)
            n_children = int(flat.max()) + 1
            per_child = np.bincount(flat, minlength=n_children)
            width = int(per_child.max())
            # inverse[c] = the flat slots of child c, padded with the index of an extra -inf slot
            inverse = np.full((n_children, width), flat.size, dtype="int32")
            order = np.argsort(flat, kind="stable")
            starts = np.concatenate([[0], np.cumsum(per_child)[:-1]])
            rank = np.arange(flat.size) - np.repeat(starts, per_child)
            inverse[flat[order], rank] = order
            self.inverse = inverse
            self.flat = flat.astype("int32")
            count = per_child[flat].reshape(positions, slots).astype("float64")
        # R⁰: uniform over every parent a child votes for (its windows times the parent types)
        self.log_r0 = -np.log(count * parents)  # float64, cast to the routing's dtype
        self.fair = np.sum(1.0 / (count * parents), axis=1)  # Σ_i R⁰_ij, per position

    def normaliser(self, logits):
        """For logits (batch, P, k, n): log Σ exp(logits) over every parent of each slot's child, as
        (batch, P, 1, n)."""
        if self.inverse is None:
            return _logsumexp(logits, axis=2, keepdims=True)
        shape = ops.shape(logits)
        per_slot = _logsumexp(logits, axis=2)  # (batch, P, n)
        per_slot = ops.reshape(per_slot, (shape[0], -1))
        padded = ops.concatenate([per_slot, ops.full_like(per_slot[:, :1], -np.inf)], axis=1)
        gathered = ops.take(padded, ops.convert_to_tensor(self.inverse), axis=1)  # (batch, children, width)
        per_child = _logsumexp(gathered, axis=-1)
        back = ops.take(per_child, ops.convert_to_tensor(self.flat), axis=1)  # (batch, P * n)
        return ops.reshape(back, (shape[0], shape[1], 1, shape[3]))


def _schedule(iterations, inverse_temperature):
    """λ_t = λ (1 - 0.95^(t+1)) / (1 - 0.95^r): Hinton's schedule, ending at ``inverse_temperature``."""
    last = 1.0 - 0.95**iterations
    return [inverse_temperature * (1.0 - 0.95 ** (t + 1)) / last for t in range(iterations)]


def em_routing(
    votes,
    activations,
    beta_u,
    beta_a,
    iterations=3,
    inverse_temperature=1.0,
    cost="article",
    children=None,
    normalise_amount=True,
    normalise_cost=True,
    variance_floor=1e-4,
    parent_activations=None,
    return_history=False,
    votes_by_parent=False,
):
    """EM routing from children to parents.

    Args:
        votes: (batch, P, n, k, d): at each of P parent positions, n vote slots, for k parent types,
            poses of d numbers (16 for 4x4).
        activations: (batch, P, n), the activation in [0, 1] of the child behind each slot.
        beta_u, beta_a: (k,) or scalars: the cost's and the activation's learned offsets.
        iterations: M-steps (with an E-step between each two): 1 to any number.
        inverse_temperature: λ at the last iteration (earlier ones follow Hinton's schedule).
        cost: "article" (5155, the default) or "paper"; see the module's docstring.
        children: None (every slot is its own child: assignments are normalised over the k types), or
            an integer array (P, n) naming each slot's child: slots that share a child (a convolution's
            overlapping windows) have their assignments normalised together, over all their parents.
        normalise_amount: divide Σ_i R'_ij by the parent's fair share Σ_i R⁰_ij (Gritzman's pitfall 3).
        normalise_cost: standardise the costs over the k parent types at each position (subtract their
            mean, divide by their standard deviation) before the activation, as Guang Yang's
            implementation does: the activations then no longer depend on the poses' overall scale,
            only on how each parent's fit compares with the others'. The default: with the plain cost
            our MNIST network did not learn (capsule/README.md); False is the cost as written.
        variance_floor: added to every variance (a single child or identical votes stay finite).
        parent_activations: (batch, P, k) or None. If given, the parents' activations are held at
            these values instead of being computed (for studying the EM part alone); the returned
            activations are then these.
        votes_by_parent: the votes are (batch, P, k, n, d) instead (what the layers make).
        return_history: also return, per iteration, a dict of the assignments ``R`` (batch, P, n, k)
            used by its M-step, and the ``mean``, ``variance`` (batch, P, k, d), ``activation``
            (batch, P, k) it produced.

    Returns:
        poses (batch, P, k, d) (the means), activations (batch, P, k) (and the history).

    Computed in float32 (float64 if the votes are float64) whatever the inputs' dtype; an activation of
    0 counts as float32's smallest normal number, so a parent whose children are all off still has a
    defined (flat) Gaussian rather than 0 / 0.
    """
    iterations = _positive_int("iterations", iterations, "em_routing")
    inverse_temperature = _positive_float("inverse_temperature", inverse_temperature, "em_routing")
    variance_floor = _positive_float("variance_floor", variance_floor, "em_routing")
    cost = _check_cost(cost, "em_routing")
    votes = ops.convert_to_tensor(votes)
    dtype = "float64" if keras.backend.standardize_dtype(votes.dtype) == "float64" else "float32"
    votes = ops.cast(votes, dtype)
    activations = ops.cast(ops.convert_to_tensor(activations), dtype)
    if len(votes.shape) != 5 or len(activations.shape) != 3:
        raise ValueError(
            f"em_routing: votes must be (batch, P, n, k, d) and activations (batch, P, n), got "
            f"{tuple(votes.shape)} and {tuple(activations.shape)}"
        )
    if votes_by_parent:  # the layers' own layout, (batch, P, k, n, d): no transposition
        _, positions, parents, slots, d = votes.shape
    else:
        _, positions, slots, parents, d = votes.shape
    if None in (positions, slots, parents, d):
        raise ValueError(f"em_routing: votes need known P, n, k, d (all but the batch), got {tuple(votes.shape)}")
    if tuple(activations.shape[1:]) != (positions, slots):
        raise ValueError(
            f"em_routing: activations must be (batch, P, n) = (batch, {positions}, {slots}) to match the votes "
            f"{tuple(votes.shape)}, got {tuple(activations.shape)}"
        )
    plan = _Plan(children, positions, slots, parents)
    beta_u = ops.cast(beta_u, dtype)
    beta_a = ops.cast(beta_a, dtype)
    tiny = float(np.finfo(dtype).tiny)
    # The votes as (batch, P, k, n, d), each parent's votes centred on their plain mean (an exact shift:
    # the variances and the E-step do not change, the means are shifted back), and their squares. The
    # routing then touches these large tensors only through contractions (over n in the M-step, over d
    # in the E-step): σ² = E[V²] - μ², ln N(V; μ, σ²) from V², V·μ/σ² and μ²/σ².
    if not votes_by_parent:
        votes = ops.transpose(votes, (0, 1, 3, 2, 4))
    centre = ops.mean(votes, axis=3, keepdims=True)
    centred = votes - centre
    squares = ops.square(centred)
    log_a_child = _log_floored(activations, tiny)[:, :, None, :]  # (b, P, 1, n)
    log_r = ops.cast(plan.log_r0, dtype)[None, :, None, :] + ops.zeros_like(votes[..., 0])  # (b, P, k, n)
    fair = ops.cast(plan.fair, dtype)[None, :, None]
    history = []
    for t, lam in enumerate(_schedule(iterations, inverse_temperature)):
        # M-step: a Gaussian per parent from its weighted votes, then its activation
        log_w = log_r + log_a_child
        log_amount = _logsumexp(log_w, axis=3)  # (b, P, k): log Σ_i R'_ij
        weights = ops.exp(log_w - log_amount[..., None])  # sum to 1 over the children
        mean = ops.einsum("bpkn,bpknd->bpkd", weights, centred)
        variance = ops.relu(ops.einsum("bpkn,bpknd->bpkd", weights, squares) - ops.square(mean))
        variance = variance + variance_floor
        log_variance = ops.log(variance)
        amount = ops.exp(log_amount)
        if normalise_amount:
            amount = amount / fair
        spread = 0.5 * ops.sum(log_variance, axis=-1)  # Σ_h ln σ_h
        if cost == "article":
            cost_j = (beta_u + spread + 0.5 * d * (1.0 + _LOG_2PI)) * amount
        else:
            cost_j = (d * beta_u + spread) * amount
        if normalise_cost:  # each cost relative to the other parent types' at the same position
            centred_cost = cost_j - ops.mean(cost_j, axis=2, keepdims=True)
            cost_j = centred_cost / ops.sqrt(ops.mean(ops.square(centred_cost), axis=2, keepdims=True) + 1e-12)
        logits = lam * (beta_a - cost_j)
        if parent_activations is None:
            activation = ops.sigmoid(logits)
            log_activation = ops.log_sigmoid(logits)
        else:
            activation = ops.cast(parent_activations, dtype)
            log_activation = _log_floored(activation, tiny)
        if return_history:
            history.append(
                {
                    "R": ops.transpose(ops.exp(log_r), (0, 1, 3, 2)),
                    "mean": mean + centre[:, :, :, 0],
                    "variance": variance,
                    "activation": activation,
                }
            )
        if t == iterations - 1:
            break
        # E-step: each child's assignments, proportional to a_j N(V_ij; μ_j, σ_j²), over all its parents
        precision = 1.0 / variance
        quadratic = (
            ops.einsum("bpknd,bpkd->bpkn", squares, precision)
            - 2.0 * ops.einsum("bpknd,bpkd->bpkn", centred, mean * precision)
            + ops.sum(ops.square(mean) * precision, axis=-1)[..., None]
        )
        log_p = -0.5 * (ops.relu(quadratic) + (ops.sum(log_variance, axis=-1) + d * _LOG_2PI)[..., None])
        logits = log_activation[..., None] + log_p  # (b, P, k, n)
        log_r = logits - plan.normaliser(logits)
    mean = mean + centre[:, :, :, 0]
    if return_history:
        return mean, activation, history
    return mean, activation


def _capsule_shapes(input_shape, where):
    """(poses shape, activations shape) of a ``[poses, activations]`` input, checked."""
    if (
        not isinstance(input_shape, (list, tuple))
        or len(input_shape) != 2
        or not all(isinstance(s, (list, tuple)) for s in input_shape)
    ):
        raise ValueError(f"{where}: expects [poses, activations], got input shape {input_shape}")
    poses, acts = (tuple(s) for s in input_shape)
    if len(poses) != len(acts) + 1 or poses[:-1][1:] != acts[1:]:
        raise ValueError(
            f"{where}: poses must be activations' shape plus the pose size: got poses {poses} and activations {acts}"
        )
    return poses, acts


def _pose_side(size, where):
    side = int(round(np.sqrt(size))) if size else 0
    if size is None or side * side != size:
        raise ValueError(f"{where}: a pose must be a flattened square matrix (16 for 4x4), got size {size}")
    return side


class _CapsuleLayer(keras.layers.Layer):
    """What the routing layers share: their routing arguments, checked, and their config."""

    def __init__(
        self,
        capsules,
        iterations=3,
        inverse_temperature=1.0,
        cost="article",
        normalise_amount=True,
        normalise_cost=True,
        variance_floor=1e-4,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        where = type(self).__name__
        self.capsules = _positive_int("capsules", capsules, where)
        self.iterations = _positive_int("iterations", iterations, where)
        self.inverse_temperature = _positive_float("inverse_temperature", inverse_temperature, where)
        self.cost = _check_cost(cost, where)
        if not isinstance(normalise_amount, (bool, np.bool_)):
            raise ValueError(f"{where}: normalise_amount must be True or False, got {normalise_amount!r}")
        self.normalise_amount = bool(normalise_amount)
        if not isinstance(normalise_cost, (bool, np.bool_)):
            raise ValueError(f"{where}: normalise_cost must be True or False, got {normalise_cost!r}")
        self.normalise_cost = bool(normalise_cost)
        self.variance_floor = _positive_float("variance_floor", variance_floor, where)
        # the vote matrices: entries of standard deviation 0.5 (2.0, which keeps the poses' scale from
        # layer to layer at initialisation, trained worse on MNIST: 0.72 against 0.92 after 400 steps)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or keras.initializers.TruncatedNormal(stddev=0.5)
        )

    def _betas(self):
        self.beta_u = self.add_weight(shape=(self.capsules,), initializer="zeros", name="beta_u")
        self.beta_a = self.add_weight(shape=(self.capsules,), initializer="zeros", name="beta_a")

    def _route(self, votes, activations, children):
        """votes (batch, P, k, n, d), activations (batch, P, n)."""
        poses, acts = em_routing(
            votes,
            activations,
            self.beta_u,
            self.beta_a,
            iterations=self.iterations,
            inverse_temperature=self.inverse_temperature,
            cost=self.cost,
            children=children,
            normalise_amount=self.normalise_amount,
            normalise_cost=self.normalise_cost,
            variance_floor=self.variance_floor,
            votes_by_parent=True,
        )
        return ops.cast(poses, self.compute_dtype), ops.cast(acts, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "capsules": self.capsules,
                "iterations": self.iterations,
                "inverse_temperature": self.inverse_temperature,
                "cost": self.cost,
                "normalise_amount": self.normalise_amount,
                "normalise_cost": self.normalise_cost,
                "variance_floor": self.variance_floor,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kexue_capsule_em")
class PrimaryCapsules(keras.layers.Layer):
    """Feature maps (batch, H, W, channels) to capsules: poses (batch, H', W', capsules, pose_size²) from
    one convolution, activations (batch, H', W', capsules) from another with a sigmoid. The paper's
    primary capsules are a 1x1 convolution (``kernel_size=1``).

    Args:
        capsules: B, the capsule types at each position.
        pose_size: the side s of the pose matrices: each pose is s x s, flattened to s² numbers (4: 16
            numbers, what the routing layers expect).
        kernel_size: the side of both convolutions' square kernel (1, the paper's, by default).
        strides: both convolutions' stride. They are valid convolutions (no padding):
            H' = (H - kernel_size) // strides + 1, and likewise W'.
        pose_initializer: for the pose convolution's kernel (None: ``"glorot_uniform"``); the
            activation convolution has Keras's defaults.

    Call arguments:
        x: feature maps (batch, H, W, channels); another rank is a ValueError.

    Returns:
        ``[poses, activations]``: poses (batch, H', W', capsules, pose_size²) and activations
        (batch, H', W', capsules) in [0, 1], in the layer's compute dtype.
    """

    def __init__(self, capsules, pose_size=4, kernel_size=1, strides=1, pose_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.pose_initializer = keras.initializers.get(pose_initializer or "glorot_uniform")
        self.capsules = _positive_int("capsules", capsules, "PrimaryCapsules")
        self.pose_size = _positive_int("pose_size", pose_size, "PrimaryCapsules")
        self.kernel_size = _positive_int("kernel_size", kernel_size, "PrimaryCapsules")
        self.strides = _positive_int("strides", strides, "PrimaryCapsules")
        conv = lambda filters, name, **kw: keras.layers.Conv2D(
            filters,
            self.kernel_size,
            strides=self.strides,
            data_format="channels_last",
            name=name,
            dtype=self.dtype_policy,
            **kw,
        )
        self.pose_conv = conv(self.capsules * self.pose_size**2, "poses", kernel_initializer=self.pose_initializer)
        self.activation_conv = conv(self.capsules, "activations", activation="sigmoid")

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"PrimaryCapsules: expects feature maps (batch, H, W, channels), got {input_shape}")
        self.pose_conv.build(input_shape)
        self.activation_conv.build(input_shape)

    def call(self, x):
        poses = self.pose_conv(x)
        shape = ops.shape(poses)
        poses = ops.reshape(poses, (shape[0], shape[1], shape[2], self.capsules, self.pose_size**2))
        return [poses, self.activation_conv(x)]

    def compute_output_spec(self, x):
        out = self.pose_conv.compute_output_spec(x)
        b, h, w, _ = out.shape
        return [
            keras.KerasTensor((b, h, w, self.capsules, self.pose_size**2), dtype=self.compute_dtype),
            keras.KerasTensor((b, h, w, self.capsules), dtype=self.compute_dtype),
        ]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "capsules": self.capsules,
                "pose_size": self.pose_size,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "pose_initializer": keras.initializers.serialize(self.pose_initializer),
            }
        )
        return config


def _windows(height, width, kernel, stride, where):
    """For a valid convolution: (out_h, out_w, child position of each (output position, kernel offset))."""
    out_h, out_w = (height - kernel) // stride + 1, (width - kernel) // stride + 1
    if height < kernel or width < kernel:
        raise ValueError(
            f"{where}: the input's capsule grid ({height}x{width}) is smaller than the kernel ({kernel}x{kernel}): "
            f"use a smaller kernel_size or strides in this or an earlier layer, or larger images"
        )
    rows = np.arange(out_h)[:, None] * stride + np.arange(kernel)[None, :]  # (out_h, K)
    cols = np.arange(out_w)[:, None] * stride + np.arange(kernel)[None, :]
    child = rows[:, None, :, None] * width + cols[None, :, None, :]  # (out_h, out_w, K, K)
    return out_h, out_w, child.reshape(out_h * out_w, kernel * kernel).astype("int32")


@keras.saving.register_keras_serializable(package="kexue_capsule_em")
class ConvCapsules(_CapsuleLayer):
    """Convolutional capsules with EM routing: [poses (batch, H, W, B, 16), activations (batch, H, W, B)]
    to [poses (batch, H', W', C, 16), activations (batch, H', W', C)], H' = (H - kernel) // strides + 1
    (a valid convolution). Each parent at each position routes the kernel x kernel x B children of its
    window; one 4x4 matrix per kernel offset, child type and parent type, shared across positions.
    A child in several windows is shared by their parents (Gritzman's pitfall 1).

    Args:
        capsules: C, the parent capsule types at each output position.
        kernel_size: K, the side of the square window (3 in the paper's two layers).
        strides: the window's stride (2, then 1, in the paper's two layers).
        iterations: EM iterations: M-steps, with an E-step between each two (3 in the paper).
        inverse_temperature: λ at the last iteration (earlier ones follow Hinton's schedule).
        cost: ``"article"`` (5155, the default) or ``"paper"``; see the module's docstring.
        normalise_amount: divide each parent's Σ_i R'_ij by its fair share (Gritzman's pitfall 3).
        normalise_cost: standardise the costs over the parent types at each position before the
            sigmoid (the default); False is the cost as written. See ``em_routing``.
        variance_floor: added to every variance, a finite number > 0 (a parent with a single child
            stays finite).
        kernel_initializer: for the 4x4 vote matrices (None: a truncated normal of standard
            deviation 0.5).

    Call arguments:
        inputs: ``[poses, activations]``, poses (batch, H, W, B, 16) and activations (batch, H, W, B) in
            [0, 1]. H, W and B must be known when the layer is built and the grid must be at least
            K x K; otherwise a ValueError names the shapes.

    Returns:
        ``[poses, activations]``: poses (batch, H', W', C, 16) and activations (batch, H', W', C), the
        parents' means and activations. The routing runs in float32 (float64 for a float64 layer)
        whatever the inputs' dtype; the outputs are in the layer's compute dtype.
    """

    def __init__(self, capsules, kernel_size=3, strides=1, **kwargs):
        super().__init__(capsules, **kwargs)
        self.kernel_size = _positive_int("kernel_size", kernel_size, "ConvCapsules")
        self.strides = _positive_int("strides", strides, "ConvCapsules")

    def _geometry(self, input_shape):
        poses, _ = _capsule_shapes(input_shape, "ConvCapsules")
        if len(poses) != 5:
            raise ValueError(
                f"ConvCapsules: expects poses (batch, H, W, types, pose) and activations (batch, H, W, types), "
                f"got poses {poses}"
            )
        _, h, w, b, size = poses
        if h is None or w is None or b is None:
            raise ValueError(
                f"ConvCapsules: the capsule grid's height, width and types must be known when the layer is "
                f"built (give keras.Input a fixed image size), got poses {poses}"
            )
        side = _pose_side(size, "ConvCapsules")
        out_h, out_w, windows = _windows(h, w, self.kernel_size, self.strides, "ConvCapsules")
        return h, w, b, side, out_h, out_w, windows

    def build(self, input_shape):
        _, _, b, side, _, _, _ = self._geometry(input_shape)
        k = self.kernel_size
        self.kernel = self.add_weight(
            shape=(k * k, b, self.capsules, side, side), initializer=self.kernel_initializer, name="kernel"
        )
        self._betas()

    def call(self, inputs):
        poses, acts = inputs
        h, w, b, side, out_h, out_w, windows = self._geometry([tuple(poses.shape), tuple(acts.shape)])
        batch = ops.shape(poses)[0]
        positions, window = windows.shape
        # the children of every window: (batch, P, K², B, side, side) and (batch, P, K², B)
        flat_poses = ops.reshape(poses, (batch, h * w, b, side, side))
        flat_poses = ops.cast(flat_poses, self.kernel.dtype)
        patches = ops.take(flat_poses, ops.convert_to_tensor(windows), axis=1)
        patch_acts = ops.take(ops.reshape(acts, (batch, h * w, b)), ops.convert_to_tensor(windows), axis=1)
        # votes P_i W_ij as (batch * P, C, K² B, side, side), in the routing's layout (parents before
        # children): the matrix product written as ``side`` broadcast products of a column by a row,
        # which XLA fuses (faster than an einsum on CPUs) and which stay within rank 5, the most that
        # TensorFlow's kernels broadcast without XLA
        patches = ops.reshape(patches, (-1, 1, window * b, side, side))
        kernel = ops.reshape(ops.transpose(self.kernel, (2, 0, 1, 3, 4)), (1, self.capsules, window * b, side, side))
        votes = sum(patches[..., y : y + 1] * kernel[..., y : y + 1, :] for y in range(side))
        votes = ops.reshape(votes, (batch, positions, self.capsules, window * b, side * side))
        children = (windows[:, :, None] * b + np.arange(b)[None, None, :]).reshape(positions, window * b)
        out_poses, out_acts = self._route(votes, ops.reshape(patch_acts, (batch, positions, window * b)), children)
        return [
            ops.reshape(out_poses, (batch, out_h, out_w, self.capsules, side * side)),
            ops.reshape(out_acts, (batch, out_h, out_w, self.capsules)),
        ]

    def compute_output_spec(self, inputs):
        poses, acts = inputs
        _, _, _, side, out_h, out_w, _ = self._geometry([tuple(poses.shape), tuple(acts.shape)])
        batch = poses.shape[0]
        return [
            keras.KerasTensor((batch, out_h, out_w, self.capsules, side * side), dtype=self.compute_dtype),
            keras.KerasTensor((batch, out_h, out_w, self.capsules), dtype=self.compute_dtype),
        ]

    def get_config(self):
        config = super().get_config()
        config.update({"kernel_size": self.kernel_size, "strides": self.strides})
        return config


@keras.saving.register_keras_serializable(package="kexue_capsule_em")
class ClassCapsules(_CapsuleLayer):
    """Class capsules: [poses (batch, H, W, D, 16), activations (batch, H, W, D)] to [poses (batch,
    classes, 16), activations (batch, classes)]. Every child at every position votes for every class
    through one 4x4 matrix per child type and class, shared across positions, so any grid size works.

    Coordinate addition (the paper's): the scaled (row, column) of each child's position, ``(r + 0.5) ·
    coordinate_scale`` and ``(c + 0.5) · coordinate_scale``, is added to the first two entries of the
    right-hand column of its votes, so that the class poses know where their parts are.
    ``coordinate_scale=None`` takes 1 / max(H, W) of the grid the layer is first built on; give it
    explicitly to run the trained layer on another image size with the same scale.

    Args:
        capsules: the classes.
        coordinate_addition: add each child's scaled position to its votes (the paper's; True or False).
        coordinate_scale: the scale above, a finite number > 0, or None (1 / max(H, W) of the first
            grid, then kept in the config).
        iterations, inverse_temperature, cost, normalise_amount, normalise_cost, variance_floor,
            kernel_initializer: as for ``ConvCapsules``.

    Call arguments:
        inputs: ``[poses, activations]``, poses (batch, H, W, D, 16) and activations (batch, H, W, D) in
            [0, 1]. H, W and D must be known when the layer is built; otherwise a ValueError.

    Returns:
        ``[poses, activations]``: the class poses (batch, capsules, 16) and activations (batch,
        capsules), the class scores in [0, 1] (``spread_loss`` takes them), in the layer's compute
        dtype.
    """

    def __init__(self, capsules, coordinate_addition=True, coordinate_scale=None, **kwargs):
        super().__init__(capsules, **kwargs)
        if not isinstance(coordinate_addition, (bool, np.bool_)):
            raise ValueError(f"ClassCapsules: coordinate_addition must be True or False, got {coordinate_addition!r}")
        self.coordinate_addition = bool(coordinate_addition)
        self.coordinate_scale = (
            None if coordinate_scale is None else _positive_float("coordinate_scale", coordinate_scale, "ClassCapsules")
        )

    def _geometry(self, input_shape):
        poses, _ = _capsule_shapes(input_shape, "ClassCapsules")
        if len(poses) != 5 or None in poses[1:4]:
            raise ValueError(
                f"ClassCapsules: expects poses (batch, H, W, types, pose) with H, W and types known when the "
                f"layer is built (give keras.Input a fixed image size), got {poses}"
            )
        _, h, w, d, size = poses
        return h, w, d, _pose_side(size, "ClassCapsules")

    def build(self, input_shape):
        h, w, d, side = self._geometry(input_shape)
        if self.coordinate_scale is None:
            self.coordinate_scale = 1.0 / max(h, w)
        self.kernel = self.add_weight(
            shape=(d, self.capsules, side, side), initializer=self.kernel_initializer, name="kernel"
        )
        self._betas()

    def _coordinates(self, h, w, side):
        """(H, W, side²): the scaled row at (0, side-1), the scaled column at (1, side-1), 0 elsewhere."""
        grid = np.zeros((h, w, side * side), dtype="float32")
        grid[:, :, side - 1] = ((np.arange(h) + 0.5) * self.coordinate_scale)[:, None]
        if side > 1:
            grid[:, :, 2 * side - 1] = ((np.arange(w) + 0.5) * self.coordinate_scale)[None, :]
        return grid

    def call(self, inputs):
        poses, acts = inputs
        h, w, d, side = self._geometry([tuple(poses.shape), tuple(acts.shape)])
        batch = ops.shape(poses)[0]
        matrices = ops.cast(ops.reshape(poses, (batch, h, w, d, side, side)), self.kernel.dtype)
        # votes (batch, classes, H, W, D, side, side), parents before children
        votes = ops.einsum("bhwixy,jiyz->bjhwixz", matrices, ops.transpose(self.kernel, (1, 0, 2, 3)))
        votes = ops.reshape(votes, (batch, self.capsules, h, w, d, side * side))
        if self.coordinate_addition:
            votes = votes + ops.cast(self._coordinates(h, w, side), votes.dtype)[None, None, :, :, None, :]
        votes = ops.reshape(votes, (batch, 1, self.capsules, h * w * d, side * side))
        out_poses, out_acts = self._route(votes, ops.reshape(acts, (batch, 1, h * w * d)), None)
        return [out_poses[:, 0], out_acts[:, 0]]

    def compute_output_spec(self, inputs):
        poses, acts = inputs
        _, _, _, side = self._geometry([tuple(poses.shape), tuple(acts.shape)])
        batch = poses.shape[0]
        return [
            keras.KerasTensor((batch, self.capsules, side * side), dtype=self.compute_dtype),
            keras.KerasTensor((batch, self.capsules), dtype=self.compute_dtype),
        ]

    def get_config(self):
        config = super().get_config()
        config.update({"coordinate_addition": self.coordinate_addition, "coordinate_scale": self.coordinate_scale})
        return config


def _check_margin(margin, where):
    if (
        isinstance(margin, bool)
        or not isinstance(margin, (int, float, np.integer, np.floating))
        or not (0 <= margin <= 1)
    ):
        raise ValueError(f"{where}: the margin must be a number in [0, 1], got {margin!r}")
    return float(margin)


@keras.saving.register_keras_serializable(package="kexue_capsule_em")
def spread_loss(y_true, y_pred, margin=0.2):
    """The paper's spread loss: ``Σ_{i ≠ t} max(0, m - (a_t - a_i))²`` for one-hot targets ``y_true``
    (batch, classes) and class activations ``y_pred`` in [0, 1]. Wrong classes are pushed at least the
    margin ``m`` below the target one; the paper raises ``m`` from 0.2 to 0.9 during training
    (``SpreadLoss`` with ``MarginSchedule``)."""
    margin = _check_margin(margin, "spread_loss")
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"spread_loss: targets must be one-hot of the activations' shape {tuple(y_pred.shape)}, got "
            f"{tuple(y_true.shape)} (one-hot encode class indices)"
        )
    target = ops.sum(y_true * y_pred, axis=-1, keepdims=True)
    return ops.sum((1.0 - y_true) * ops.square(ops.relu(margin - (target - y_pred))), axis=-1)


@keras.saving.register_keras_serializable(package="kexue_capsule_em")
class SpreadLoss(keras.losses.Loss):
    """``spread_loss`` as a Keras loss whose margin ``MarginSchedule`` moves during training.

    Args:
        margin: m, a number in [0, 1] (0.2, where the paper starts).
        name: the loss's name.
        **kwargs: the other ``keras.losses.Loss`` arguments (``reduction``, ``dtype``).

    Call arguments:
        y_true: one-hot targets (batch, classes); class indices are a ValueError (one-hot encode them).
        y_pred: the class activations (batch, classes), in [0, 1].

    Returns:
        The samples' spread losses reduced by ``reduction`` (by default their mean over the batch).
    """

    def __init__(self, margin=0.2, name="spread_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = _check_margin(margin, "SpreadLoss")

    def call(self, y_true, y_pred):
        return spread_loss(y_true, y_pred, self.margin)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin})
        return config


class MarginSchedule(keras.callbacks.Callback):
    """Raise the ``SpreadLoss`` margin linearly from ``start`` (first epoch) to ``stop`` (epoch
    ``epochs - 1`` and after), as the paper does (0.2 to 0.9). The margin is a constant in the compiled
    training step, so the step is rebuilt when it changes (once an epoch); the margin depends only on
    the epoch number, so a resumed run continues the schedule.

    Args:
        epochs: the run's number of epochs, a positive integer: the margin reaches ``stop`` at epoch
            ``epochs - 1`` (counted from 0).
        start: the margin at the first epoch, a number in [0, 1].
        stop: the margin from epoch ``epochs - 1`` on, a number in [0, 1].
    """

    def __init__(self, epochs, start=0.2, stop=0.9):
        super().__init__()
        self.epochs = _positive_int("epochs", epochs, "MarginSchedule")
        self.start = _check_margin(start, "MarginSchedule")
        self.stop = _check_margin(stop, "MarginSchedule")

    def margin(self, epoch):
        if epoch >= self.epochs - 1:
            return self.stop
        return self.start + (self.stop - self.start) * epoch / (self.epochs - 1)

    def on_epoch_begin(self, epoch, logs=None):
        loss = self.model.loss
        if not isinstance(loss, SpreadLoss):
            raise ValueError(f"MarginSchedule: the model must be compiled with a SpreadLoss, got {loss!r}")
        margin = self.margin(epoch)
        if margin != loss.margin:
            loss.margin = margin
            self.model.make_train_function(force=True)
            self.model.make_test_function(force=True)
