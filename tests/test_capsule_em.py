"""capsule/em.py: EM routing and the matrix-capsule layers against a float64 NumPy reference written with
explicit loops over children and parents, routing invariants (each with a control that shows the check
can fail), degenerate inputs, shapes, saving, XLA, the spread loss and its margin schedule. The errors
for bad input are in tests/catalogue/test_bad_layers.py."""

import re

import numpy as np
import pytest
from conftest import BACKEND, REPO, grad, run_copied_alone

pytest.importorskip(BACKEND, reason=f"KERAS_BACKEND={BACKEND} but {BACKEND} is not installed")
import keras  # noqa: E402

from capsule.em import (  # noqa: E402
    COSTS,
    ClassCapsules,
    ConvCapsules,
    MarginSchedule,
    PrimaryCapsules,
    SpreadLoss,
    em_routing,
    spread_loss,
)

np_ = keras.ops.convert_to_numpy
TINY32 = float(np.finfo(np.float32).tiny)
LOG_2PI = float(np.log(2 * np.pi))


def float64_routes_in_float64():
    """JAX without x64 turns float64 arrays into float32; TensorFlow and PyTorch keep them."""
    return keras.backend.standardize_dtype(keras.ops.convert_to_tensor(np.zeros(1)).dtype) == "float64"


# --------------------------------------------------------------------------------------------------
# The reference: float64, one child, one parent, one iteration at a time


def np_sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def np_log_normal(v, mu, var):
    """log N(v; mu, diag var) of one vector."""
    return -0.5 * float(np.sum(np.log(var) + LOG_2PI + (v - mu) ** 2 / var))


def np_logsumexp(values):
    values = np.asarray(values, "float64")
    top = values.max()
    return float(top + np.log(np.sum(np.exp(values - top))))


def child_slots(children, positions, slots):
    """{child id: [(p, s), ...]}: the vote slots holding each child (each slot its own child if None)."""
    ids = np.arange(positions * slots).reshape(positions, slots) if children is None else np.asarray(children)
    held = {}
    for p in range(positions):
        for s in range(slots):
            held.setdefault(int(ids[p, s]), []).append((p, s))
    return held


def np_em_routing(
    votes,
    acts,
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
    activation_floor=TINY32,
    e_step_logits=None,
):
    """EM routing with scalar loops. votes (batch, P, n, k, d), acts (batch, P, n). ``e_step_logits``
    (for controls only) replaces the E-step's log a_j N(V_ij) before the normalisation over each child."""
    votes = np.asarray(votes, "float64")
    acts = np.asarray(acts, "float64")
    batch, positions, slots, parents, d = votes.shape
    beta_u = np.broadcast_to(np.asarray(beta_u, "float64"), (parents,))
    beta_a = np.broadcast_to(np.asarray(beta_a, "float64"), (parents,))
    held = child_slots(children, positions, slots)
    share = np.zeros((positions, slots))  # R⁰ of each slot, for each parent type
    for members in held.values():
        for p, s in members:
            share[p, s] = 1.0 / (parents * len(members))
    fair = [sum(share[p, s] for s in range(slots)) for p in range(positions)]
    R = np.zeros((batch, positions, slots, parents))
    for p in range(positions):
        for s in range(slots):
            R[:, p, s, :] = share[p, s]
    history = []
    for t in range(iterations):
        lam = inverse_temperature * (1 - 0.95 ** (t + 1)) / (1 - 0.95**iterations)
        mean = np.zeros((batch, positions, parents, d))
        variance = np.zeros((batch, positions, parents, d))
        activation = np.zeros((batch, positions, parents))
        costs = np.zeros((batch, positions, parents))
        for b in range(batch):
            for p in range(positions):
                for j in range(parents):
                    w = [R[b, p, s, j] * max(acts[b, p, s], activation_floor) for s in range(slots)]
                    amount = sum(w)
                    mu = sum(w[s] * votes[b, p, s, j] for s in range(slots)) / amount
                    var = sum(w[s] * (votes[b, p, s, j] - mu) ** 2 for s in range(slots)) / amount + variance_floor
                    if normalise_amount:
                        amount = amount / fair[p]
                    spread = 0.5 * np.sum(np.log(var))
                    if cost == "article":
                        c = (beta_u[j] + spread + 0.5 * d * (1 + LOG_2PI)) * amount
                    else:
                        c = (d * beta_u[j] + spread) * amount
                    mean[b, p, j], variance[b, p, j] = mu, var
                    costs[b, p, j] = c
                if normalise_cost:  # standardised over the parent types at this position
                    spread_of_costs = np.sqrt(np.mean((costs[b, p] - costs[b, p].mean()) ** 2) + 1e-12)
                    costs[b, p] = (costs[b, p] - costs[b, p].mean()) / spread_of_costs
                for j in range(parents):
                    if parent_activations is None:
                        activation[b, p, j] = np_sigmoid(lam * (beta_a[j] - costs[b, p, j]))
                    else:
                        activation[b, p, j] = parent_activations[b, p, j]
        history.append({"R": R.copy(), "mean": mean, "variance": variance, "activation": activation})
        if t == iterations - 1:
            break
        log_p = np.zeros((batch, positions, slots, parents))
        for b in range(batch):
            for p in range(positions):
                for s in range(slots):
                    for j in range(parents):
                        log_p[b, p, s, j] = np.log(activation[b, p, j]) + np_log_normal(
                            votes[b, p, s, j], mean[b, p, j], variance[b, p, j]
                        )
        if e_step_logits is not None:
            log_p = e_step_logits(log_p)
        for b in range(batch):
            for members in held.values():
                total = np_logsumexp([log_p[b, p, s, j] for p, s in members for j in range(parents)])
                for p, s in members:
                    R[b, p, s, :] = np.exp(log_p[b, p, s, :] - total)
    return mean, activation, history


def np_conv_votes(poses, kernel, kernel_size, strides):
    """A valid capsule convolution's votes (batch, P, K²B, C, 16), child map (P, K²B) and output grid."""
    poses, kernel = np.asarray(poses, "float64"), np.asarray(kernel, "float64")
    batch, height, width, types, _ = poses.shape
    classes = kernel.shape[2]
    out_h, out_w = (height - kernel_size) // strides + 1, (width - kernel_size) // strides + 1
    window = kernel_size * kernel_size * types
    votes = np.zeros((batch, out_h * out_w, window, classes, 16))
    children = np.zeros((out_h * out_w, window), "int64")
    for r in range(out_h):
        for c in range(out_w):
            for u in range(kernel_size):
                for v in range(kernel_size):
                    row, col = r * strides + u, c * strides + v
                    for t in range(types):
                        slot = (u * kernel_size + v) * types + t
                        children[r * out_w + c, slot] = (row * width + col) * types + t
                        for j in range(classes):
                            for b in range(batch):
                                vote = poses[b, row, col, t].reshape(4, 4) @ kernel[u * kernel_size + v, t, j]
                                votes[b, r * out_w + c, slot, j] = vote.reshape(16)
    return votes, children, (out_h, out_w)


def np_class_votes(poses, kernel, scale, coordinate_addition=True):
    """Class capsules' votes (batch, 1, H·W·D, classes, 16), with the scaled coordinates added."""
    poses, kernel = np.asarray(poses, "float64"), np.asarray(kernel, "float64")
    batch, height, width, types, _ = poses.shape
    classes = kernel.shape[1]
    votes = np.zeros((batch, 1, height * width * types, classes, 16))
    for b in range(batch):
        for r in range(height):
            for c in range(width):
                for t in range(types):
                    for j in range(classes):
                        vote = (poses[b, r, c, t].reshape(4, 4) @ kernel[t, j]).reshape(16)
                        if coordinate_addition:
                            vote[3] += (r + 0.5) * scale
                            vote[7] += (c + 0.5) * scale
                        votes[b, 0, (r * width + c) * types + t, j] = vote
    return votes


def np_log_likelihood(votes, acts, parent_acts, children, mean, variance):
    """Σ_i a_i log Σ_{(slot, type) holding i} a_j N(V_ij; μ_j, σ_j²): what EM climbs when a_j is fixed."""
    votes = np.asarray(votes, "float64")
    batch, positions, slots, parents, _ = votes.shape
    total = 0.0
    for b in range(batch):
        for members in child_slots(children, positions, slots).values():
            p0, s0 = members[0]
            terms = [
                np.log(parent_acts[b, p, j]) + np_log_normal(votes[b, p, s, j], mean[b, p, j], variance[b, p, j])
                for p, s in members
                for j in range(parents)
            ]
            total += acts[b, p0, s0] * np_logsumexp(terms)
    return total


def np_spread_loss(y, a, margin):
    target = np.sum(y * a, -1, keepdims=True)
    return np.sum((1 - y) * np.maximum(0.0, margin - (target - a)) ** 2, -1)


def routing_inputs(seed, batch=2, positions=3, slots=5, parents=3, d=16, n_children=6, scale=0.5):
    """Random votes, a child map in which children share slots, and per-child activations."""
    rng = np.random.default_rng(seed)
    votes = (rng.normal(size=(batch, positions, slots, parents, d)) * scale).astype("float32")
    children = rng.integers(0, n_children, (positions, slots))
    child_acts = rng.uniform(0.05, 1.0, (batch, n_children))
    return votes, children, child_acts, rng


def assert_history_close(got, expected, scale):
    """Each iteration's R, μ, σ², a against the float64 loops. R (and the a computed from it) comes
    from log-densities divided by the previous iteration's variances: where one has shrunk towards the
    floor, a float32 rounding of the votes' scale (scale² ε) becomes scale² ε / σ² in the E-step's
    logits, and R is compared to within that, row by row (1.5e-4 was measured on PyTorch for a variance of
    1.6e-4 against votes up to 1.7: the bound is 2e-3 there, 1e-4 where variances stay large)."""
    assert len(got) == len(expected)
    tolerance = np.full((len(expected[0]["R"]), 1, 1, 1), 1e-4)  # per batch row (R is normalised across a row)
    for g, e in zip(got, expected):
        np.testing.assert_array_less(np.abs(np_(g["R"]) - e["R"]), tolerance + 1e-4 * np.abs(e["R"]))
        np.testing.assert_allclose(np_(g["mean"]), e["mean"], rtol=1e-4, atol=1e-4 * scale)
        np.testing.assert_allclose(np_(g["variance"]), e["variance"], rtol=1e-4, atol=1e-4 * scale**2)
        within = tolerance[:, :, 0] + 1e-4 * np.abs(e["activation"])
        np.testing.assert_array_less(np.abs(np_(g["activation"]) - e["activation"]), within)
        smallest = e["variance"].min(axis=(1, 2, 3))[:, None, None, None]
        tolerance = np.maximum(1e-4, float(scale) ** 2 * np.finfo("float32").eps / smallest)


# --------------------------------------------------------------------------------------------------
# em_routing against the reference


@pytest.mark.layers
@pytest.mark.parametrize("shared", [False, True], ids=["children=None", "children=map"])
@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("normalise_amount", [True, False])
@pytest.mark.parametrize("normalise_cost", [True, False])
def test_em_routing_matches_the_loop_reference(shared, cost, iterations, normalise_amount, normalise_cost):
    """Outputs and every iteration's R, μ, σ², a agree with the float64 loops (float32 computation)."""
    seed = 10 * iterations + 2 * COSTS.index(cost) + normalise_amount + 100 * normalise_cost
    votes, children, child_acts, rng = routing_inputs(seed)
    children = children if shared else None
    acts = child_acts[:, children] if shared else rng.uniform(0.05, 1.0, votes.shape[:3])
    acts = acts.astype("float32")
    beta_u = (rng.normal(size=3) * 0.5).astype("float32")
    beta_a = rng.normal(size=3).astype("float32")
    kwargs = dict(iterations=iterations, cost=cost, children=children, normalise_amount=normalise_amount)
    kwargs["normalise_cost"] = normalise_cost
    poses, activations, history = em_routing(votes, acts, beta_u, beta_a, return_history=True, **kwargs)
    mean, activation, expected = np_em_routing(votes, acts, beta_u, beta_a, **kwargs)
    assert tuple(poses.shape) == (2, 3, 3, 16) and tuple(activations.shape) == (2, 3, 3)
    np.testing.assert_allclose(np_(poses), mean, rtol=1e-4, atol=1e-4 * np.abs(mean).max())
    np.testing.assert_allclose(np_(activations), activation, rtol=1e-4, atol=1e-4)
    assert_history_close(history, expected, np.abs(votes).max())


@pytest.mark.layers
def test_em_routing_in_float64_matches_the_reference_where_float32_is_ill_conditioned():
    """float64 votes route in float64 and agree with the reference to 1e-6 (scalar betas too), on two
    children with unit-scale votes, where parents collapse onto the variance floor (the sharpest case)."""
    if not float64_routes_in_float64():
        pytest.skip(f"{BACKEND} computes float64 arrays in float32 (JAX without x64)")
    rng = np.random.default_rng(3)
    votes = rng.normal(size=(2, 4, 2, 3, 16))
    acts = rng.uniform(0.05, 1.0, (2, 4, 2))
    poses, activations = em_routing(votes, acts, 0.3, -0.2, iterations=4, inverse_temperature=2.0)
    assert keras.backend.standardize_dtype(poses.dtype) == "float64"
    mean, activation, history = np_em_routing(votes, acts, 0.3, -0.2, iterations=4, inverse_temperature=2.0)
    assert np.any(history[-1]["variance"] < 1.01e-4)  # the case is the ill-conditioned one
    # 1e-8: PyTorch's float64 contractions sum in another order; on the floor that moves a pose by 5e-9
    np.testing.assert_allclose(np_(poses), mean, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(np_(activations), activation, rtol=1e-6, atol=1e-8)


@pytest.mark.layers
def test_votes_by_parent_is_the_same_routing_on_transposed_votes():
    """votes_by_parent=True (the layers' layout) routes (batch, P, k, n, d) exactly as the transpose."""
    votes, children, child_acts, _ = routing_inputs(5)
    acts = child_acts[:, children].astype("float32")
    plain = em_routing(votes, acts, 0.1, 0.2, children=children)
    by_parent = em_routing(np.swapaxes(votes, 2, 3), acts, 0.1, 0.2, children=children, votes_by_parent=True)
    for a, b in zip(plain, by_parent):
        np.testing.assert_allclose(np_(b), np_(a), rtol=1e-5, atol=1e-6)


@pytest.mark.layers
def test_slot_order_does_not_matter_without_a_child_map():
    """Permuting the vote slots (votes and activations together) leaves the routing unchanged; control:
    permuting the votes alone changes it."""
    votes, _, _, rng = routing_inputs(6)
    acts = rng.uniform(0.05, 1.0, votes.shape[:3]).astype("float32")
    perm = rng.permutation(votes.shape[2])
    poses, activations = em_routing(votes, acts, 0.1, 0.2)
    poses_p, activations_p = em_routing(votes[:, :, perm], acts[:, :, perm], 0.1, 0.2)
    np.testing.assert_allclose(np_(poses_p), np_(poses), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np_(activations_p), np_(activations), rtol=1e-5, atol=1e-6)
    poses_c, _ = em_routing(votes[:, :, perm], acts, 0.1, 0.2)
    assert np.abs(np_(poses_c) - np_(poses)).max() > 1e-3


# --------------------------------------------------------------------------------------------------
# The layers against the reference built from their weights


def set_betas(layer, rng):
    layer.beta_u.assign((rng.normal(size=layer.capsules) * 0.3).astype("float32"))
    layer.beta_a.assign(rng.normal(size=layer.capsules).astype("float32"))


LAYER_SETTINGS = {
    "defaults": {},
    "paper-2it": dict(iterations=2, cost="paper", normalise_amount=False, inverse_temperature=0.5, variance_floor=1e-3),
    "plain-cost": dict(normalise_cost=False, inverse_temperature=0.1),
}


@pytest.mark.layers
@pytest.mark.parametrize("settings", list(LAYER_SETTINGS))
@pytest.mark.parametrize(
    "kernel_size, strides, height, width", [(3, 1, 5, 5), (3, 2, 5, 5), (2, 2, 4, 6), (1, 1, 4, 6)]
)
def test_conv_capsules_match_the_reference(kernel_size, strides, height, width, settings):
    rng = np.random.default_rng(kernel_size * 10 + strides)
    poses = (rng.normal(size=(2, height, width, 2, 16)) * 0.2).astype("float32")
    acts = rng.uniform(0.05, 1.0, (2, height, width, 2)).astype("float32")
    layer = ConvCapsules(3, kernel_size, strides, **LAYER_SETTINGS[settings])
    layer.build([poses.shape, acts.shape])
    layer.kernel.assign((rng.normal(size=tuple(layer.kernel.shape)) * 0.5).astype("float32"))
    set_betas(layer, rng)
    out_poses, out_acts = layer([poses, acts])
    votes, children, (out_h, out_w) = np_conv_votes(poses, np_(layer.kernel), kernel_size, strides)
    slot_acts = acts.reshape(2, -1)[:, children]  # each slot's child's activation
    routing = dict(LAYER_SETTINGS[settings])
    mean, activation, _ = np_em_routing(
        votes, slot_acts, np_(layer.beta_u), np_(layer.beta_a), **routing, children=children
    )
    np.testing.assert_allclose(
        np_(out_poses), mean.reshape(2, out_h, out_w, 3, 16), rtol=1e-4, atol=1e-4 * np.abs(mean).max()
    )
    # 1x1 kernels give each parent 2 children, whose variances sit near the floor: there float32 keeps
    # about 3 digits of an activation (2e-4 on JAX), while a wrong vote or child map moves it by tenths
    tolerance = 1e-3 if kernel_size == 1 else 1e-4
    np.testing.assert_allclose(np_(out_acts), activation.reshape(2, out_h, out_w, 3), rtol=tolerance, atol=tolerance)


@pytest.mark.layers
@pytest.mark.parametrize(
    "options",
    [{}, {"coordinate_scale": 0.7}, {"coordinate_addition": False}, LAYER_SETTINGS["paper-2it"]],
    ids=["default-scale", "scale=0.7", "no-coordinates", "paper-2it"],
)
def test_class_capsules_match_the_reference(options):
    """Votes per child type and class, the scaled (row + 0.5, col + 0.5) added at entries 3 and 7, every
    child of the 4x6 grid competing for the classes; default scale 1 / max(H, W)."""
    rng = np.random.default_rng(7)
    poses = (rng.normal(size=(2, 4, 6, 2, 16)) * 0.2).astype("float32")
    acts = rng.uniform(0.05, 1.0, (2, 4, 6, 2)).astype("float32")
    layer = ClassCapsules(3, **options)
    layer.build([poses.shape, acts.shape])
    layer.kernel.assign((rng.normal(size=(2, 3, 4, 4)) * 0.5).astype("float32"))
    set_betas(layer, rng)
    out_poses, out_acts = layer([poses, acts])
    assert tuple(out_poses.shape) == (2, 3, 16) and tuple(out_acts.shape) == (2, 3)
    scale = options.get("coordinate_scale", 1 / 6)
    votes = np_class_votes(poses, np_(layer.kernel), scale, options.get("coordinate_addition", True))
    routing = {k: v for k, v in options.items() if k not in ("coordinate_scale", "coordinate_addition")}
    mean, activation, _ = np_em_routing(votes, acts.reshape(2, 1, -1), np_(layer.beta_u), np_(layer.beta_a), **routing)
    np.testing.assert_allclose(np_(out_poses), mean[:, 0], rtol=1e-4, atol=1e-4 * np.abs(mean).max())
    np.testing.assert_allclose(np_(out_acts), activation[:, 0], rtol=1e-4, atol=1e-4)


@pytest.mark.layers
def test_primary_capsules_are_two_convolutions_reshaped():
    """1x1 primary capsules: poses x W + b reshaped to (capsules, 16) and sigmoid(x w + c) activations."""
    x = np.random.default_rng(8).normal(size=(2, 3, 4, 5)).astype("float32")
    layer = PrimaryCapsules(3)
    poses, acts = layer(x)
    w, b = (np_(v) for v in layer.pose_conv.weights)
    wa, ba = (np_(v) for v in layer.activation_conv.weights)
    expected = (np.einsum("bhwc,cf->bhwf", x.astype("float64"), w[0, 0]) + b).reshape(2, 3, 4, 3, 16)
    np.testing.assert_allclose(np_(poses), expected, rtol=1e-5, atol=1e-5)
    logits = np.einsum("bhwc,cf->bhwf", x.astype("float64"), wa[0, 0]) + ba
    np.testing.assert_allclose(np_(acts), np_sigmoid(logits), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Invariants


@pytest.mark.layers
@pytest.mark.parametrize("case", ["children=None", "children=map", "ConvCapsules map"])
def test_responsibilities_sum_to_one_over_every_parent_of_each_child(case):
    """Each child's R sums to 1 over every (slot, parent type) holding it; parents' activations are in
    (0, 1). Control: summed per slot (a window-by-window normalisation) they do not sum to 1."""
    votes, children, child_acts, rng = routing_inputs(9)
    if case == "children=None":
        children, acts = None, rng.uniform(0.05, 1.0, votes.shape[:3])
    elif case == "children=map":
        acts = child_acts[:, children]
    else:
        poses = rng.normal(size=(2, 4, 4, 2, 16)) * 0.3
        votes, children, _ = np_conv_votes(poses, rng.normal(size=(9, 2, 3, 4, 4)) * 0.5, 3, 1)
        votes = votes.astype("float32")
        acts = rng.uniform(0.05, 1.0, (2, 32))[:, children]
    _, _, history = em_routing(votes, acts.astype("float32"), 0.1, 0.0, 4, 0.1, children=children, return_history=True)
    ids = np.arange(np.prod(votes.shape[1:3])).reshape(votes.shape[1:3]) if children is None else children
    for step in history:
        r = np_(step["R"])
        assert r.shape == acts.shape + (3,) and np.all(r >= 0)
        for b in range(2):
            per_child = np.bincount(ids.ravel(), weights=r[b].sum(-1).ravel())
            np.testing.assert_allclose(per_child[np.unique(ids)], 1.0, atol=1e-5)
        a = np_(step["activation"])
        assert np.all((a > 0) & (a < 1))
    if children is not None:  # control: children shared by several slots do not sum to 1 per slot
        per_slot = np_(history[-1]["R"]).sum(-1)
        assert np.abs(per_slot - 1).max() > 0.2


def em_inputs_for_likelihood(shared):
    """Well separated votes (each child near the centre of the parent it belongs to, far from the
    others'), per-child activations, fixed parent activations."""
    rng = np.random.default_rng(12)
    batch, positions, slots, parents, d, n_children = 2, 2, 16, 3, 2, 24
    children = rng.integers(0, n_children, (positions, slots)) if shared else None
    centres = rng.normal(size=(parents, d)) * 3
    owner = rng.integers(0, parents, (positions, slots))
    spread = np.where(owner[..., None] == np.arange(parents), 0.5, 2.0)  # (P, n, k)
    votes = centres + rng.normal(size=(batch, positions, slots, parents, d)) * spread[None, ..., None]
    acts = (
        rng.uniform(0.2, 1.0, (batch, n_children))[:, children]
        if shared
        else rng.uniform(0.2, 1.0, (batch, positions, slots))
    )
    parent_acts = rng.uniform(0.2, 0.9, (batch, positions, parents))
    return votes, acts, parent_acts, children


def is_non_decreasing(values, tolerance):
    return bool(np.all(np.diff(values) >= -tolerance))


@pytest.mark.layers
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shared", [False, True], ids=["children=None", "children=map"])
def test_fixed_activations_em_never_decreases_the_log_likelihood(shared, dtype):
    """With a_j held, routing is EM on Σ_i a_i log Σ_j a_j N(V_ij; μ_j, σ_j²): it never goes down. Control:
    the same M-steps after an E-step that assigns at random go down somewhere (same seed, same check)."""
    if dtype == "float64" and not float64_routes_in_float64():
        pytest.skip(f"{BACKEND} computes float64 arrays in float32 (JAX without x64)")
    votes, acts, parent_acts, children = em_inputs_for_likelihood(shared)
    votes = votes.astype(dtype)  # the likelihood below is evaluated in float64 on these votes
    kwargs = dict(iterations=7, children=children, variance_floor=1e-12, parent_activations=parent_acts)
    _, activations, history = em_routing(votes, acts, 0.0, 0.0, return_history=True, **kwargs)
    np.testing.assert_allclose(np_(activations), parent_acts, rtol=1e-6)  # held, as documented
    trace = [np_log_likelihood(votes, acts, parent_acts, children, np_(h["mean"]), np_(h["variance"])) for h in history]
    tolerance = {"float32": 1e-5, "float64": 1e-10}[dtype] * np.abs(trace).max()
    assert trace[-1] - trace[0] > 10, trace  # the climb is real, not flat
    assert min(np_(h["variance"]).min() for h in history) > 1e-4  # no Gaussian collapses onto one vote
    assert is_non_decreasing(trace, tolerance), np.diff(trace)
    noise = np.random.default_rng(0)
    _, _, broken = np_em_routing(votes, acts, 0.0, 0.0, e_step_logits=lambda lp: noise.normal(size=lp.shape), **kwargs)
    broken_trace = [np_log_likelihood(votes, acts, parent_acts, children, h["mean"], h["variance"]) for h in broken]
    assert not is_non_decreasing(broken_trace, tolerance), np.diff(broken_trace)


# --------------------------------------------------------------------------------------------------
# Degenerate inputs: finite outputs and gradients


def total(outputs):
    poses, acts = outputs[:2]
    return keras.ops.sum(keras.ops.cast(poses, "float32")) + keras.ops.sum(keras.ops.cast(acts, "float32"))


def degenerate_case(name):
    """(votes, activations) of a degenerate routing, float32 unless the case is float16."""
    rng = np.random.default_rng(12)
    votes = rng.normal(size=(2, 2, 4, 3, 16)).astype("float32")
    acts = rng.uniform(0.1, 1.0, (2, 2, 4)).astype("float32")
    if name == "single child":
        return votes[:, :, :1], acts[:, :, :1]
    if name == "identical votes":
        return np.broadcast_to(votes[:, :, :1, :1], votes.shape).copy(), acts
    if name == "all children off":
        return votes, np.zeros_like(acts)
    if name == "float16":
        return votes.astype("float16"), acts.astype("float16")
    return votes, acts


DEGENERATE = ["single child", "identical votes", "all children off", "float16"]


@pytest.mark.layers
@pytest.mark.parametrize("iterations", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("name", DEGENERATE)
def test_degenerate_routing_gives_finite_outputs_and_gradients(name, iterations):
    """Outputs, and gradients with respect to the votes, the activations and both betas, are finite."""
    votes, acts = degenerate_case(name)
    beta_u, beta_a = np.array([0.1, -0.2, 0.3], "float32"), np.array([0.0, 0.5, -0.5], "float32")
    route = lambda v, a, bu, ba: em_routing(v, a, bu, ba, iterations=iterations)
    poses, activations = route(votes, acts, beta_u, beta_a)
    assert np.all(np.isfinite(np_(poses))) and np.all(np.isfinite(np_(activations)))
    assert np.all((np_(activations) >= 0) & (np_(activations) <= 1))
    gradients = {
        "votes": grad(lambda v: total(route(v, acts, beta_u, beta_a)), votes),
        "activations": grad(lambda a: total(route(votes, a, beta_u, beta_a)), acts),
        "beta_u": grad(lambda bu: total(route(votes, acts, bu, beta_a)), beta_u),
        "beta_a": grad(lambda ba: total(route(votes, acts, beta_u, ba)), beta_a),
    }
    for what, g in gradients.items():
        assert np.all(np.isfinite(g)), f"{name}: gradient wrt {what} is not finite"
    if name in ("single child", "identical votes"):  # the poses are the votes themselves
        np.testing.assert_allclose(np_(poses), np.broadcast_to(votes[:, :, 0], np_(poses).shape), atol=1e-5)


@pytest.mark.layers
@pytest.mark.parametrize("name", ["single child", "identical votes", "all children off"])
def test_degenerate_cases_break_the_naive_formulas(name):
    """Control for the test above: without the variance floor and the activation floor, the same inputs
    give -inf or NaN (σ² = 0, or Σ R' = 0), so the finite results come from em.py's safeguards."""
    votes, acts = degenerate_case(name)
    with np.errstate(all="ignore"):
        poses, activations, _ = np_em_routing(votes, acts, 0.1, 0.0, variance_floor=0.0, activation_floor=0.0)
        poses_safe, activations_safe, _ = np_em_routing(votes, acts, 0.1, 0.0)
    assert not (np.all(np.isfinite(poses)) and np.all(np.isfinite(activations)) and np.all(activations > 0))
    assert np.all(np.isfinite(poses_safe)) and np.all(np.isfinite(activations_safe))


@pytest.mark.layers
@pytest.mark.parametrize("name", ["1x1 grid, one type", "identical poses", "all children off", "float16"])
def test_degenerate_inputs_through_the_layers_stay_finite(name):
    """ConvCapsules (kernel 1) then ClassCapsules on degenerate capsules: finite outputs and gradients
    with respect to the poses and the activations (float16 inputs route in float32)."""
    rng = np.random.default_rng(13)
    shape = (2, 1, 1, 1) if name.startswith("1x1") else (2, 3, 3, 2)
    poses = rng.normal(size=shape + (16,)).astype("float32")
    acts = rng.uniform(0.1, 1.0, shape).astype("float32")
    if name == "identical poses":
        poses = np.broadcast_to(poses[:1, :1, :1, :1], poses.shape).copy()
    if name == "all children off":
        acts = np.zeros_like(acts)
    if name == "float16":
        poses, acts = poses.astype("float16"), acts.astype("float16")
    conv, classes = ConvCapsules(2, 1), ClassCapsules(3)
    net = lambda p, a: classes(conv([p, a]))
    out_poses, out_acts = net(poses, acts)
    assert np.all(np.isfinite(np_(out_poses))) and np.all(np.isfinite(np_(out_acts)))
    assert np.all(np.isfinite(grad(lambda p: total(net(p, acts)), poses)))
    assert np.all(np.isfinite(grad(lambda a: total(net(poses, a)), acts)))


# --------------------------------------------------------------------------------------------------
# Shapes, grid sizes


@pytest.mark.layers
@pytest.mark.parametrize("kernel_size, strides", [(3, 1), (3, 2), (2, 2), (1, 1), (4, 3)])
@pytest.mark.parametrize("height, width", [(5, 5), (4, 6), (7, 4)])
def test_conv_capsules_output_shape_is_a_valid_convolution(kernel_size, strides, height, width):
    """(H - K) // s + 1 both symbolically (keras.Input) and on arrays."""
    out_h, out_w = (height - kernel_size) // strides + 1, (width - kernel_size) // strides + 1
    poses, acts = keras.Input((height, width, 2, 16)), keras.Input((height, width, 2))
    layer = ConvCapsules(3, kernel_size, strides)
    sym_poses, sym_acts = layer([poses, acts])
    assert tuple(sym_poses.shape) == (None, out_h, out_w, 3, 16) and tuple(sym_acts.shape) == (None, out_h, out_w, 3)
    assert tuple(layer.kernel.shape) == (kernel_size**2, 2, 3, 4, 4)
    data = [np.zeros((2, height, width, 2, 16), "float32"), np.full((2, height, width, 2), 0.5, "float32")]
    got_poses, got_acts = layer(data)
    assert tuple(got_poses.shape) == (2, out_h, out_w, 3, 16) and tuple(got_acts.shape) == (2, out_h, out_w, 3)


@pytest.mark.layers
@pytest.mark.parametrize(
    "kernel_size, strides, pose_size, expected", [(1, 1, 4, (7, 6)), (3, 2, 4, (3, 2)), (2, 1, 3, (6, 5))]
)
def test_primary_capsules_shapes(kernel_size, strides, pose_size, expected):
    """(batch, H', W', capsules, pose_size²) and (batch, H', W', capsules), symbolic and on arrays."""
    inputs = keras.Input((7, 6, 3))
    layer = PrimaryCapsules(5, pose_size=pose_size, kernel_size=kernel_size, strides=strides)
    poses, acts = layer(inputs)
    assert tuple(poses.shape) == (None, *expected, 5, pose_size**2) and tuple(acts.shape) == (None, *expected, 5)
    got_poses, got_acts = layer(np.ones((2, 7, 6, 3), "float32"))
    assert tuple(got_poses.shape) == (2, *expected, 5, pose_size**2) and tuple(got_acts.shape) == (2, *expected, 5)
    assert np.all((np_(got_acts) > 0) & (np_(got_acts) < 1))


@pytest.mark.layers
def test_class_capsules_take_another_grid_with_the_same_weights():
    """Weights trained on a 3x3 grid work on 6x3 (a 56x28 image's two digits): a new layer scales the
    coordinates by its own grid (1/6), the same layer keeps the scale of its first grid (1/3)."""
    rng = np.random.default_rng(14)
    small = ClassCapsules(3)
    small.build([(None, 3, 3, 2, 16), (None, 3, 3, 2)])
    small.kernel.assign((rng.normal(size=(2, 3, 4, 4)) * 0.5).astype("float32"))
    set_betas(small, rng)
    tall = ClassCapsules(3)
    tall.build([(None, 6, 3, 2, 16), (None, 6, 3, 2)])
    tall.set_weights(small.get_weights())
    poses = (rng.normal(size=(2, 6, 3, 2, 16)) * 0.2).astype("float32")
    acts = rng.uniform(0.05, 1.0, (2, 6, 3, 2)).astype("float32")
    weights = (np_(small.kernel), np_(small.beta_u), np_(small.beta_a))
    for layer, scale in [(tall, 1 / 6), (small, 1 / 3)]:
        out_poses, out_acts = layer([poses, acts])
        votes = np_class_votes(poses, weights[0], scale)
        mean, activation, _ = np_em_routing(votes, acts.reshape(2, 1, -1), weights[1], weights[2])
        np.testing.assert_allclose(np_(out_poses), mean[:, 0], rtol=1e-4, atol=1e-4 * np.abs(mean).max())
        np.testing.assert_allclose(np_(out_acts), activation[:, 0], rtol=1e-4, atol=1e-4)
    assert small.get_config()["coordinate_scale"] == pytest.approx(1 / 3)


def tiny_model(height=8, width=8):
    """Input -> Conv2D -> PrimaryCapsules -> ConvCapsules (3, stride 2) -> ClassCapsules -> activations."""
    inputs = keras.Input((height, width, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    capsules = PrimaryCapsules(2)(x)
    capsules = ConvCapsules(2, 3, 2, iterations=2, cost="paper")(capsules)
    _, activations = ClassCapsules(3, coordinate_scale=0.25)(capsules)
    return keras.Model(inputs, activations)


def tiny_data(n=8):
    rng = np.random.default_rng(15)
    images = rng.random((n, 8, 8, 1)).astype("float32")
    return images, keras.utils.to_categorical(rng.integers(0, 3, n), 3)


@pytest.mark.layers
def test_a_model_for_another_image_size_loads_the_same_weights(tmp_path):
    """A .weights.h5 saved by the 8x8 model loads into one built for 16x8 images, which runs."""
    keras.utils.set_random_seed(0)
    model = tiny_model()
    path = tmp_path / "em.weights.h5"
    model.save_weights(path)
    tall = tiny_model(16, 8)  # 8x8 -> 2x2 class grid, 16x8 -> 6x2
    tall.load_weights(path)
    for a, b in zip(tall.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    out = np_(tall(np.random.default_rng(0).random((2, 16, 8, 1)).astype("float32")))
    assert out.shape == (2, 3) and np.all(np.isfinite(out))


# --------------------------------------------------------------------------------------------------
# Saving, configs, XLA


@pytest.mark.layers
def test_keras_save_and_load_round_trip(tmp_path):
    """The trained model comes back with identical predictions, its layers' settings and the loss."""
    images, y = tiny_data()
    keras.utils.set_random_seed(0)
    model = tiny_model()
    model.compile(keras.optimizers.Adam(0.01), SpreadLoss(0.35))
    model.fit(images, y, batch_size=4, epochs=1, verbose=0)
    path = tmp_path / "em.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np_(loaded(images)), np_(model(images)))
    assert isinstance(loaded.loss, SpreadLoss) and loaded.loss.margin == 0.35
    assert loaded.evaluate(images, y, verbose=0) == pytest.approx(model.evaluate(images, y, verbose=0), rel=1e-6)
    conv = next(layer for layer in loaded.layers if isinstance(layer, ConvCapsules))
    assert (conv.kernel_size, conv.strides, conv.iterations, conv.cost) == (3, 2, 2, "paper")


@pytest.mark.layers
@pytest.mark.parametrize(
    "make, inputs",
    [
        (lambda: PrimaryCapsules(3, pose_size=3, kernel_size=2, strides=2), (2, 5, 5, 4)),
        (
            lambda: ConvCapsules(
                2,
                2,
                1,
                iterations=4,
                inverse_temperature=0.5,
                cost="paper",
                normalise_amount=False,
                variance_floor=1e-3,
                kernel_initializer="glorot_uniform",
            ),
            ((2, 3, 3, 2, 16), (2, 3, 3, 2)),
        ),
        (lambda: ClassCapsules(3, coordinate_addition=False, iterations=2), ((2, 3, 3, 2, 16), (2, 3, 3, 2))),
        (lambda: ClassCapsules(3, coordinate_scale=0.4, cost="paper"), ((2, 3, 3, 2, 16), (2, 3, 3, 2))),
    ],
    ids=["PrimaryCapsules", "ConvCapsules", "ClassCapsules", "ClassCapsules-scale"],
)
def test_layer_config_round_trip(make, inputs):
    """from_config(get_config()) makes a layer with the same config and, given the weights, outputs."""
    layer = make()
    rng = np.random.default_rng(16)
    data = (
        rng.random(inputs).astype("float32")
        if isinstance(inputs[0], int)
        else [rng.normal(size=inputs[0]).astype("float32"), rng.random(inputs[1]).astype("float32")]
    )
    out = layer(data)
    clone = type(layer).from_config(layer.get_config())
    clone(data)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == layer.get_config()
    for a, b in zip(clone(data), out):
        np.testing.assert_array_equal(np_(a), np_(b))


@pytest.mark.layers
def test_spread_loss_config_round_trip():
    """SpreadLoss keeps its margin, name and reduction through get_config / from_config."""
    loss = SpreadLoss(0.45, name="spread", reduction="sum")
    clone = SpreadLoss.from_config(loss.get_config())
    assert clone.get_config() == loss.get_config() and clone.margin == 0.45
    y, a = np.eye(3, dtype="float32")[[0, 2]], np.array([[0.3, 0.5, 0.2], [0.9, 0.1, 0.6]], "float32")
    assert float(np_(clone(y, a))) == pytest.approx(np_spread_loss(y, a, 0.45).sum(), rel=1e-6)


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="jit_compile=True is the TensorFlow/XLA check (JAX always compiles)"
)
def test_trains_and_predicts_under_xla_jit_compile():
    """The tiny model trains a few steps with SpreadLoss under XLA (finite loss, weights move), and its
    compiled predictions equal an eager model's with the same weights."""
    images, y = tiny_data()
    keras.utils.set_random_seed(0)
    model = tiny_model()
    before = [np.array(w) for w in model.get_weights()]
    model.compile(keras.optimizers.Adam(0.01), SpreadLoss(0.5), jit_compile=True)
    loss = model.fit(images, y, batch_size=4, epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(loss)) and loss[0] > 0
    assert any(np.abs(a - b).max() > 0 for a, b in zip(model.get_weights(), before))
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    eager = tiny_model()
    eager.set_weights(model.get_weights())
    eager.compile(jit_compile=False)
    jit = model.predict(images, verbose=0)
    np.testing.assert_allclose(jit, eager.predict(images, verbose=0), atol=1e-5)
    np.testing.assert_allclose(jit, np_(eager(images)), atol=1e-5)


def test_em_py_runs_copied_alone(tmp_path):
    """em.py works copied alone into an empty folder (the convention for an article's layers)."""
    script = (
        "import numpy as np\n"
        "from layers import ClassCapsules\n"
        "p = np.zeros((2, 3, 3, 2, 16), 'float32'); a = np.full((2, 3, 3, 2), 0.5, 'float32')\n"
        "print(tuple(ClassCapsules(10)([p, a])[1].shape))\n"
    )
    assert run_copied_alone(REPO / "capsule" / "em.py", script, tmp_path) == "(2, 10)"


# --------------------------------------------------------------------------------------------------
# The spread loss and its margin schedule


@pytest.mark.layers
def test_spread_loss_hand_values():
    """a_t = 0.9 and the others 0.1, 0.8: with m = 0.2 only 0.8 is within the margin, (0.2 - 0.1)² = 0.01;
    with m = 0.9 both are, 0.1² + 0.8² = 0.65. A wrong class above the target: (0.2 + 0.3)² = 0.25."""
    y = np.array([[1, 0, 0], [0, 1, 0]], "float32")
    a = np.array([[0.9, 0.1, 0.8], [0.2, 0.4, 0.7]], "float32")
    np.testing.assert_allclose(np_(spread_loss(y, a, 0.2)), [0.01, 0.25 + 0.0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np_(spread_loss(y, a, 0.9)), [0.65, 0.7**2 + 1.2**2], rtol=1e-5)
    np.testing.assert_allclose(np_(spread_loss(y, a)), np_(spread_loss(y, a, 0.2)))  # the default is 0.2
    assert float(np_(SpreadLoss(0.9)(y, a))) == pytest.approx((0.65 + 0.49 + 1.44) / 2, rel=1e-5)
    assert float(np_(spread_loss(np.eye(3, dtype="float32"), np.eye(3, dtype="float32"), 0.9)[0])) == 0.0


@pytest.mark.layers
def test_margin_schedule_values():
    """0.2 at epoch 0, linear, 0.9 at epoch epochs - 1 and after; one epoch is the last one."""
    schedule = MarginSchedule(8)
    margins = [schedule.margin(epoch) for epoch in range(10)]
    np.testing.assert_allclose(margins[:8], np.linspace(0.2, 0.9, 8), atol=1e-12)
    assert margins[0] == 0.2 and margins[7:] == [0.9, 0.9, 0.9]  # the stop value itself, not a rounding of it
    assert MarginSchedule(1).margin(0) == pytest.approx(0.9) and MarginSchedule(3, start=0.5, stop=0.1).margin(
        1
    ) == pytest.approx(0.3)


def margin_model():
    """A fixed model (SGD with learning rate 0) whose spread loss depends visibly on the margin."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="sigmoid")])
    model.compile(keras.optimizers.SGD(0.0), SpreadLoss(0.2))
    x = np.random.default_rng(17).normal(size=(6, 4)).astype("float32")
    return model, x, keras.utils.to_categorical([0, 1, 2, 0, 1, 2], 3)


@pytest.mark.layers
def test_margin_schedule_reaches_the_compiled_loss():
    """Each epoch's logged loss is the spread loss at that epoch's margin (0.2, then 0.9); evaluate()
    after fit uses the last margin; a resumed fit (initial_epoch) continues the schedule."""
    model, x, y = margin_model()
    loss = model.fit(x, y, epochs=2, batch_size=6, callbacks=[MarginSchedule(2)], verbose=0).history["loss"]
    a = model.predict(x, verbose=0)
    at = {m: float(np_spread_loss(y, a, m).mean()) for m in (0.2, 0.55, 0.9)}
    assert at[0.9] - at[0.2] > 0.3  # the margin shows in the loss
    np.testing.assert_allclose(loss, [at[0.2], at[0.9]], rtol=1e-5)
    assert model.loss.margin == 0.9  # exactly the stop value from the last epoch on
    assert model.evaluate(x, y, verbose=0) == pytest.approx(at[0.9], rel=1e-5)
    resumed, _, _ = margin_model()
    resumed.set_weights(model.get_weights())
    loss = resumed.fit(x, y, epochs=3, initial_epoch=1, batch_size=6, callbacks=[MarginSchedule(3)], verbose=0)
    np.testing.assert_allclose(loss.history["loss"], [at[0.55], at[0.9]], rtol=1e-5)


@pytest.mark.layers
def test_margin_schedule_refuses_another_loss():
    """The schedule can only move a SpreadLoss's margin; another compiled loss is an error."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match=re.escape("MarginSchedule: the model must be compiled with a SpreadLoss")):
        model.fit(np.zeros((2, 3)), np.zeros((2, 3)), callbacks=[MarginSchedule(2)], verbose=0)


# The bad-input errors of these layers: tests/catalogue/test_bad_layers.py, section capsule/em.py.
