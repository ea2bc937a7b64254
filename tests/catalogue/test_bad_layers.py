"""The reliability catalogue, the non-CRF layers (activations/, capsule/, attention/, poetry/): one test
per input a layer may be handed, asserting the right answer against an independent float64 oracle (or a
closed form), or the specific error.

The contract under test: a finite input gives the float64 answer to float precision, value and
gradient (no NaN where a finite answer exists); ±inf gives the function's limit where it has one; NaN
at a real position stays NaN (never repaired); what masked (padded) steps hold never reaches a real
position or a gradient; other ranks raise a ValueError naming the shape; integer and float16 inputs
are computed as floats; empty batches and lengths 0 and 1 give the empty or degenerate answer. Controls
show that the oracles can fail: the textbook formulas, or the layers without the option, get it wrong.
"""

import re

import numpy as np
import pytest
from conftest import BACKEND, grad

pytest.importorskip(BACKEND, reason=f"KERAS_BACKEND={BACKEND} but {BACKEND} is not installed")
import keras  # noqa: E402
from keras import ops  # noqa: E402

from activations.layers import Swish, XMinExp, swish, x_min_exp  # noqa: E402
from attention.layers import (  # noqa: E402
    Attention,
    MaskedGlobalAveragePooling1D,
    PositionEmbedding,
    TrainablePositionEmbedding,
    sinusoidal_position_embedding,
)
from capsule.em import (  # noqa: E402
    ClassCapsules,
    ConvCapsules,
    MarginSchedule,
    PrimaryCapsules,
    SpreadLoss,
    em_routing,
    spread_loss,
)
from capsule.layers import ROUTINGS, Capsule, CapsuleLength, margin_loss, squash  # noqa: E402
from poetry.layers import GCNN, sequence_nll  # noqa: E402
from vae.layers import (  # noqa: E402
    KLDivergence,
    Sampling,
    bernoulli_nll,
    gaussian_log_density,
    log_importance_weights,
)

pytestmark = pytest.mark.layers
np_ = ops.convert_to_numpy
INF, NAN = float("inf"), float("nan")
TINY = 1e-37  # absolute slack for answers below float32's smallest normal number (TF flushes them to 0)


def close(got, expected, rtol=1e-5, scale=1e-6):
    """float32 against float64: relative to each value, plus ``scale`` times the largest of them."""
    expected = np.asarray(expected, "float64")
    largest = np.abs(expected).max() if expected.size else 0.0
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=scale * largest + TINY)


# --------------------------------------------------------------------------------------------------
# activations: swish, x_min_exp, Swish


def sigmoid64(z):
    with np.errstate(over="ignore"):
        return np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))


def swish64(x, beta=1.0):
    """Value and derivative of x * sigmoid(beta x), float64."""
    s = sigmoid64(beta * x)
    return x * s, s + beta * x * s * (1 - s)


def x_min_exp64(x):
    with np.errstate(over="ignore"):
        e = np.exp(np.minimum(x, 0))
    return np.where(x < 0, x * e, x), np.where(x < 0, e * (1 + x), 1.0)


EXTREMES = np.array([-3.4e38, -1e30, -200, -100, -20, -1, -1e-30, 0, 1e-30, 1, 20, 100, 1e30, 3.4e38], "float32")


@pytest.mark.parametrize("name", ["swish", "swish_beta_0.5", "x_min_exp"])
def test_activations_at_finite_extremes_match_float64(name):
    """Finite inputs from -3.4e38 to 3.4e38 -> the float64 value and derivative (no inf * 0 anywhere)."""
    f, oracle = {
        "swish": (swish, swish64),
        "swish_beta_0.5": (lambda x: swish(x, 0.5), lambda x: swish64(x, 0.5)),
        "x_min_exp": (x_min_exp, x_min_exp64),
    }[name]
    value, slope = oracle(EXTREMES.astype("float64"))
    close(np_(f(EXTREMES)), value)
    close(grad(f, EXTREMES), slope)


@pytest.mark.parametrize(
    "f, x, value, slope",
    [
        (swish, -INF, 0.0, 0.0),
        (swish, INF, INF, 1.0),
        (lambda x: swish(x, -1.0), INF, 0.0, 0.0),  # beta < 0: the gate closes at +inf
        (lambda x: swish(x, -1.0), -INF, -INF, 1.0),
        (lambda x: swish(x, 0.0), -INF, -INF, 0.5),  # beta = 0: x / 2
        (x_min_exp, -INF, 0.0, 0.0),
        (x_min_exp, INF, INF, 1.0),
    ],
    ids=["swish(-inf)=0", "swish(+inf)=inf", "swish_b-1(+inf)=0", "swish_b-1(-inf)=-inf", "swish_b0(-inf)=-inf"]
    + ["x_min_exp(-inf)=0", "x_min_exp(+inf)=inf"],
)
def test_activations_at_infinity_give_their_limit_and_its_gradient(f, x, value, slope):
    """±inf -> the limit of the function and of its derivative (the product formula gives inf * 0 = NaN)."""
    x = np.array([x, 1.0], "float32")
    got = np_(f(x))
    assert got[0] == value and np.isfinite(got[1])
    assert grad(f, x)[0] == slope


def test_control_the_plain_products_give_nan_at_infinity():
    """Control: x * sigmoid(x) and x * exp(min(x, 0)), written plainly, are NaN at -inf, so the limits
    above are not what any formula gives."""
    x = ops.convert_to_tensor(np.array([-INF], "float32"))
    assert np.isnan(np_(x * ops.sigmoid(x))[0]) and np.isnan(np_(x * ops.exp(ops.minimum(x, 0)))[0])


ACTIVATIONS = {
    "swish": (lambda: swish, swish64),
    "x_min_exp": (lambda: x_min_exp, x_min_exp64),
    "Swish": (Swish, swish64),
    "Swish_trainable": (lambda: Swish(trainable_beta=True), swish64),
    "XMinExp": (XMinExp, x_min_exp64),
}


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_keep_nan_visible(name):
    """NaN -> NaN at that position only (never repaired to a number)."""
    got = np_(ACTIVATIONS[name][0]()(np.array([NAN, -2.0, 3.0], "float32")))
    assert np.isnan(got[0]) and np.all(np.isfinite(got[1:]))


def test_swish_with_trainable_beta_trains_on_infinite_inputs():
    """Swish(trainable_beta=True) fed -inf (its limit is 0): the loss, the gradient with respect to beta and
    beta after a step are finite, and the gradient equals the float64 one of the finite inputs."""
    x = np.array([-INF, -1.5, 0.5, 2.0], "float32")
    beta = np.array(0.7, "float32")
    g = grad(lambda b: swish(x, b), beta)  # d/d beta sum_i x_i sigmoid(beta x_i)
    finite = x[1:].astype("float64")
    s = sigmoid64(0.7 * finite)
    np.testing.assert_allclose(g, np.sum(finite**2 * s * (1 - s)), rtol=1e-5)
    model = keras.Sequential([keras.Input((4,)), Swish(beta=0.7, trainable_beta=True)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    loss = model.train_on_batch(x[None], np.zeros((1, 4), "float32"))
    assert np.isfinite(loss) and np.isfinite(np_(model.layers[0].beta)) and np_(model.layers[0].beta) != 0.7


@pytest.mark.parametrize("beta", [NAN, INF, "1"], ids=["nan", "inf", "str"])
def test_swish_rejects_a_beta_that_is_not_a_finite_number(beta):
    """Swish(beta=nan / inf / "1") -> ValueError naming beta (it would make every output NaN)."""
    with pytest.raises(ValueError, match="Swish: beta must be a finite number"):
        Swish(beta=beta)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_take_ints_float16_and_empty_batches(name):
    """int32 -> float32 values of the float64 formula; float16 -> float16 within its precision (a float32
    layer: float32, as Keras casts inputs to the layer's dtype); batch 0 -> batch 0."""
    make, oracle = ACTIVATIONS[name]
    f = make()
    ints = np.array([[-3, 0, 2]], "int32")
    expected = oracle(ints.astype("float64"))[0]
    got = np_(f(ints))
    assert got.dtype == np.float32
    close(got, expected)
    half = np_(f(ints.astype("float16")))
    assert half.dtype == (np.float16 if name in ("swish", "x_min_exp") else np.float32)  # a layer: its dtype
    np.testing.assert_allclose(half, expected, rtol=2e-3, atol=1e-4)
    assert np_(f(np.zeros((0, 3), "float32"))).shape == (0, 3)


# --------------------------------------------------------------------------------------------------
# capsule: squash, CapsuleLength, Capsule, margin_loss


def squash64(x, constant):
    """Value, and the gradient of sum(w * squash(x)), in float64: v = x g(r), g = r / (C + r²)."""
    x = np.asarray(x, "float64")
    r = np.linalg.norm(x, axis=-1, keepdims=True)
    g = r / (constant + r**2)
    dg = (constant - r**2) / (constant + r**2) ** 2
    return x * g, lambda w: g * w + np.sum(w * x, -1, keepdims=True) * dg * np.divide(x, r, where=r > 0, out=0 * x)


SCALES = [1e-35, 1e-30, 1e-19, 1e-4, 0.3, 1.0, 3.0, 1e4, 1e19, 1e20, 1e30, 3e38]


def rows(*vectors):
    """Capsules (6, 4), float32: ``vectors`` in the first rows (zeros after them), zero capsules below. One
    shape for every squash test, so that JAX compiles each operation once."""
    x = np.zeros((6, 4), "float32")
    for i, vector in enumerate(vectors):
        x[i, : len(vector)] = vector
    return x


@pytest.mark.parametrize("constant", [1.0, 0.5])
@pytest.mark.parametrize("scale", SCALES, ids=[f"{s:g}" for s in SCALES])
def test_squash_matches_float64_at_every_scale(scale, constant):
    """Vectors whose largest entry is ``scale`` (1e-35 to 3e38) -> float64's squash and gradient to float32
    precision: unit-length directions at 1e19 and beyond (||x||² overflows there), the formula's length
    at 1e-4 (where an epsilon under the root would distort it)."""
    rng = np.random.default_rng(int(np.log10(scale)) + 40)
    r = rng.uniform(-1, 1, (6, 4))
    r /= np.abs(r).max(-1, keepdims=True)
    x = (r * scale).astype("float32")
    w = rng.normal(size=x.shape).astype("float32")
    value, vjp = squash64(x, constant)
    close(np_(squash(x, constant=constant)), value, rtol=2e-5)
    got = grad(lambda t: ops.multiply(squash(t, constant=constant), w), x)
    expected = vjp(w.astype("float64"))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max() + TINY)


def test_control_the_textbook_squash_fails_this_catalogue():
    """Control: ||x||² / (C + ||x||²) x / sqrt(||x||² + 1e-7) is NaN at 1e20 and 0.41 of the length at
    1e-4: the oracle above tells them apart."""

    def textbook(x):
        s = ops.sum(ops.square(x), -1, keepdims=True)
        return x * (s / ((1.0 + s) * ops.sqrt(s + 1e-7)))

    big, small = np.full((1, 2), 1e20, "float32"), np.full((1, 2), 1e-4, "float32")
    assert np.all(np.isnan(np_(textbook(ops.convert_to_tensor(big)))))
    np.testing.assert_allclose(np_(textbook(ops.convert_to_tensor(small))) / squash64(small, 1.0)[0], 0.408, atol=1e-3)


@pytest.mark.parametrize("x", [0.0, 1e-40, -1e-45], ids=["zero", "subnormal", "smallest_subnormal"])
def test_squash_of_zero_and_subnormal_vectors_is_zero_with_zero_gradient(x):
    """0 and subnormal vectors (below 1.2e-38) -> 0, and a gradient of 0 (the float64 one is below 1e-38):
    finite, not the NaN of 0 / 0."""
    v = np.full((6, 4), x, "float32")
    assert np.all(np_(squash(v, constant=0.5)) == 0)
    g = grad(lambda t: squash(t, constant=0.5), v)
    assert np.all(np.isfinite(g)) and np.all(np.abs(g) <= TINY)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_squash_of_16_bit_vectors_is_computed_in_float32(dtype):
    """16-bit [300, 400] (its square overflows float16) -> [0.6, 0.8] in that dtype; [1e-2, 0] -> the
    float64 length 1e-4 (its square, 1e-4² = 1e-8, underflows float16)."""
    x = rows([300.0, 400.0], [1e-2])
    got = squash(ops.cast(x, dtype))
    assert keras.backend.standardize_dtype(got.dtype) == dtype
    np.testing.assert_allclose(np_(ops.cast(got, "float32")), squash64(x, 1.0)[0], rtol=1e-2, atol=1e-7)


@pytest.mark.parametrize(
    "x, expected",
    [
        ([INF, 5.0, 0.0], [1.0, 0.0, 0.0]),
        ([-3.0, -INF, 1e30], [0.0, -1.0, 0.0]),
        ([INF, INF, 0.0], [NAN] * 4),  # the direction of (inf, inf) is undetermined
        ([NAN, 1.0, 2.0], [NAN] * 4),
    ],
    ids=["one_inf->unit", "one_minus_inf->unit", "two_inf->nan", "nan->nan"],
)
def test_squash_of_infinite_or_nan_entries(x, expected):
    """One infinite entry -> the unit vector along it (the limit), with a finite gradient; several, or a
    NaN -> NaN (no direction to give)."""
    x = rows(x)
    np.testing.assert_array_equal(np_(squash(x)), rows(expected))
    if np.all(np.isfinite(expected)):
        assert np.all(np.isfinite(grad(squash, x)))


@pytest.mark.parametrize("scale", SCALES, ids=[f"{s:g}" for s in SCALES])
def test_capsule_length_matches_float64_at_every_scale(scale):
    """Capsules of any scale -> the float64 norm (inf past float32's largest, 3.4e38) and the gradient
    x / ||x||, exactly where ||x||² would overflow or underflow."""
    rng = np.random.default_rng(1)
    x = (rng.uniform(-1, 1, (6, 4)) * scale).astype("float32")
    expected = np.linalg.norm(x.astype("float64"), axis=-1)
    got = np_(CapsuleLength()(x))
    representable = expected < 3.4e38
    close(got[representable], expected[representable])
    assert np.all(got[~representable] == INF)
    g = grad(CapsuleLength(), x)
    np.testing.assert_allclose(g, x / np.linalg.norm(x.astype("float64"), axis=-1, keepdims=True), atol=1e-6)


def test_capsule_length_of_zero_infinite_and_nan_capsules():
    """Zero -> 0 with gradient 0; an inf entry (one or two) -> inf; a NaN entry -> NaN; empty batch -> (0, k)."""
    v = rows([0.0, 0.0], [INF, 1.0], [INF, -INF], [NAN, 1.0])
    np.testing.assert_array_equal(np_(CapsuleLength()(v)), [0.0, INF, INF, NAN, 0.0, 0.0])
    assert np.all(grad(CapsuleLength(), rows()) == 0)
    assert np_(CapsuleLength()(np.zeros((0, 3, 4), "float32"))).shape == (0, 3)


def routing64(kernel, u, num_capsule, dim_capsule, routings, routing, constant):
    """The three routings in float64, vectorised (shared weights)."""
    u_hat = (np.asarray(u, "float64") @ np.asarray(kernel, "float64")).reshape(*u.shape[:2], num_capsule, dim_capsule)
    u_hat = u_hat.transpose(0, 2, 1, 3)  # (batch, j, i, d)
    b = np.zeros(u_hat.shape[:3])
    for it in range(routings):
        c = np.exp(b - b.max(1, keepdims=True))
        c /= c.sum(1, keepdims=True)
        s = np.einsum("bji,bjid->bjd", c, u_hat)
        if routing == "kmeans":
            if it == routings - 1:
                return squash64(s, constant)[0]
            norm = np.linalg.norm(s, axis=-1, keepdims=True)
            b = np.einsum("bjd,bjid->bji", np.divide(s, norm, where=norm > 0, out=0 * s), u_hat)
        else:
            v = squash64(s, constant)[0]
            agreement = np.einsum("bjd,bjid->bji", v, u_hat)
            b = b + agreement if routing == "paper" else agreement
    return v


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("scale", [1e19, 1e30])
def test_capsule_layer_with_huge_inputs_matches_float64_routing(scale, routing):
    """Input capsules of 1e19 and 1e30 -> the float64 routing's outputs (NaN or 0 before squash was
    scale-safe): unit-length capsules after one iteration; after three, unit length or 0 where the
    saturated softmax leaves an output no input (in float64 too; exactly, its length is below e^-1e19)."""
    u = (np.random.default_rng(2).normal(size=(2, 5, 6)) * scale).astype("float32")
    for routings in (1, 3):
        layer = Capsule(3, 4, routings=routings, routing=routing)
        got = np_(layer(u))
        expected = routing64(np_(layer.kernel), u, 3, 4, routings, routing, layer.constant)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        lengths = np.linalg.norm(got, axis=-1)
        assert np.all((np.abs(lengths - 1) < 1e-6) | ((lengths == 0) & (routings == 3)))


@pytest.mark.parametrize("n", [0, 1])
def test_capsule_layer_with_zero_or_one_input_capsule_and_an_empty_batch(n):
    """n = 0 input capsules -> zero outputs (the empty sum squashed), coupling of shape (batch, 0, k);
    n = 1 -> the float64 routing; batch 0 -> (0, k, d)."""
    layer = Capsule(3, 4)
    u = np.random.default_rng(3).normal(size=(2, n, 6)).astype("float32")
    v, c = (np_(t) for t in layer(u, return_coupling=True))
    assert v.shape == (2, 3, 4) and c.shape == (2, n, 3)
    np.testing.assert_allclose(v, routing64(np_(layer.kernel), u, 3, 4, 3, "article", 0.5) if n else 0.0, atol=1e-6)
    assert np_(layer(np.zeros((0, 5, 6), "float32"))).shape == (0, 3, 4)


def test_capsule_layers_reject_other_ranks_with_the_shape():
    """Rank 2, or another capsule size, after building -> ValueError naming the shape (not a reshape's
    error from the backend); CapsuleLength of a single vector -> ValueError."""
    layer = Capsule(3, 4)
    layer(np.zeros((2, 5, 6), "float32"))
    with pytest.raises(ValueError, match=r"Capsule: input must be capsules \(batch, n, dim\), got shape \(5, 6\)"):
        layer(np.zeros((5, 6), "float32"))
    with pytest.raises(ValueError, match=r"built for input capsules of size 6, called with shape \(2, 5, 7\)"):
        layer(np.zeros((2, 5, 7), "float32"))
    with pytest.raises(ValueError, match=r"CapsuleLength: input must be capsules .*got shape \(4,\)"):
        CapsuleLength()(np.zeros((4,), "float32"))


def test_capsule_layer_takes_int_and_float16_inputs():
    """int32 and float16 input capsules -> the float32 layer's outputs for the same values."""
    layer = Capsule(3, 4)
    u = np.random.default_rng(4).integers(-3, 4, (2, 5, 6))
    expected = np_(layer(u.astype("float32")))
    np.testing.assert_allclose(np_(layer(u.astype("int32"))), expected, atol=1e-6)
    np.testing.assert_allclose(np_(layer(u.astype("float16"))), expected, atol=1e-6)


@pytest.mark.parametrize(
    "y_pred, expected",
    [
        ([INF, -INF], 0.0),  # the true class scores +inf, the other -inf: nothing to pay
        ([-INF, 0.5], INF),  # the true class at -inf
        ([0.95, INF], INF),  # another class at +inf
        ([NAN, 0.0], NAN),
    ],
    ids=["right_infinities->0", "true_class_-inf->inf", "other_class_+inf->inf", "nan->nan"],
)
def test_margin_loss_at_infinite_scores(y_pred, expected):
    """Scores of ±inf -> the formula's limit (0 * inf = NaN would hide it), gradient finite where the loss is;
    NaN -> NaN."""
    y_true = np.array([[1.0, 0.0]], "float32")
    y_pred = np.array([y_pred], "float32")
    got = np_(margin_loss(y_true, y_pred))[0]
    assert got == expected or (np.isnan(expected) and np.isnan(got))
    if np.isfinite(expected):
        np.testing.assert_array_equal(grad(lambda p: margin_loss(y_true, p), y_pred), [[0.0, 0.0]])


# --------------------------------------------------------------------------------------------------
# capsule/em.py: PrimaryCapsules, ConvCapsules, ClassCapsules, em_routing, SpreadLoss, MarginSchedule


def em_capsules(poses_shape, acts_shape):
    """[poses, activations] of zeros and one half, of the shapes given."""
    return [np.zeros(poses_shape, "float32"), np.full(acts_shape, 0.5, "float32")]


def em_unknown_grid():
    """Primary capsules on an image of unknown height and width."""
    inputs = keras.Input((None, None, 1))
    return PrimaryCapsules(2)(keras.layers.Conv2D(2, 3)(inputs))


EM_VOTES, EM_ACTS = np.zeros((1, 1, 2, 2, 16), "float32"), np.full((1, 1, 2), 0.5, "float32")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ConvCapsules(0), "ConvCapsules: capsules must be a positive integer, got 0"),
        (lambda: ConvCapsules(2.5), "ConvCapsules: capsules must be a positive integer, got 2.5"),
        (lambda: ClassCapsules(True), "ClassCapsules: capsules must be a positive integer, got True"),
        (lambda: PrimaryCapsules(0), "PrimaryCapsules: capsules must be a positive integer, got 0"),
        (lambda: ConvCapsules(2, iterations=0), "ConvCapsules: iterations must be a positive integer, got 0"),
        (lambda: ClassCapsules(2, iterations=2.5), "ClassCapsules: iterations must be a positive integer, got 2.5"),
        (
            lambda: em_routing(EM_VOTES, EM_ACTS, 0, 0, iterations=True),
            "em_routing: iterations must be a positive integer",
        ),
        (lambda: ConvCapsules(2, kernel_size=0), "ConvCapsules: kernel_size must be a positive integer, got 0"),
        (lambda: ConvCapsules(2, kernel_size=2.5), "ConvCapsules: kernel_size must be a positive integer, got 2.5"),
        (lambda: PrimaryCapsules(2, kernel_size=True), "PrimaryCapsules: kernel_size must be a positive integer"),
        (lambda: ConvCapsules(2, strides=0), "ConvCapsules: strides must be a positive integer, got 0"),
        (lambda: ConvCapsules(2, cost="hinton"), "ConvCapsules: cost must be one of ('article', 'paper')"),
        (
            lambda: em_routing(EM_VOTES, EM_ACTS, 0, 0, cost="Paper"),
            "em_routing: cost must be one of ('article', 'paper')",
        ),
        (lambda: ClassCapsules(2, variance_floor=0), "ClassCapsules: variance_floor must be a finite number > 0"),
        (
            lambda: ConvCapsules(2, inverse_temperature=float("inf")),
            "ConvCapsules: inverse_temperature must be a finite number > 0, got inf",
        ),
        (lambda: ConvCapsules(2, normalise_amount=1), "ConvCapsules: normalise_amount must be True or False, got 1"),
        (
            lambda: ClassCapsules(2, normalise_cost="yes"),
            "ClassCapsules: normalise_cost must be True or False, got 'yes'",
        ),
        (lambda: ClassCapsules(2, coordinate_scale=-1), "ClassCapsules: coordinate_scale must be a finite number > 0"),
        (
            lambda: ConvCapsules(2, 3)(em_capsules((1, 2, 4, 2, 16), (1, 2, 4, 2))),
            "ConvCapsules: the input's capsule grid (2x4) is smaller than the kernel (3x3)",
        ),
        (
            lambda: ConvCapsules(2, 3)(em_unknown_grid()),
            "ConvCapsules: the capsule grid's height, width and types must be known when the layer is built "
            "(give keras.Input a fixed image size)",
        ),
        (
            lambda: ClassCapsules(2)(em_unknown_grid()),
            "ClassCapsules: expects poses (batch, H, W, types, pose) with H, W and types known when the layer is "
            "built (give keras.Input a fixed image size)",
        ),
        (
            lambda: ConvCapsules(2, 1)(em_capsules((1, 2, 2, 2, 15), (1, 2, 2, 2))),
            "ConvCapsules: a pose must be a flattened square matrix (16 for 4x4), got size 15",
        ),
        (
            lambda: ClassCapsules(2)(em_capsules((1, 2, 2, 2, 8), (1, 2, 2, 2))),
            "ClassCapsules: a pose must be a flattened square matrix (16 for 4x4), got size 8",
        ),
        (
            lambda: ConvCapsules(2, 1)(em_capsules((1, 2, 2, 2, 16), (1, 2, 2, 3))),
            "ConvCapsules: poses must be activations' shape plus the pose size: got poses (1, 2, 2, 2, 16) and "
            "activations (1, 2, 2, 3)",
        ),
        (
            lambda: ClassCapsules(2)(np.zeros((1, 2, 2, 2, 16), "float32")),
            "ClassCapsules: expects [poses, activations]",
        ),
        (
            lambda: em_routing(EM_VOTES, np.zeros((1, 1, 3), "float32"), 0, 0),
            "em_routing: activations must be (batch, P, n) = (batch, 1, 2) to match the votes (1, 1, 2, 2, 16), "
            "got (1, 1, 3)",
        ),
        (
            lambda: em_routing(EM_VOTES, EM_ACTS, 0, 0, children=np.array([[0, -1]])),
            "em_routing: children must be non-negative integers of shape (1, 2)",
        ),
        (
            lambda: PrimaryCapsules(2)(np.zeros((1, 4, 4), "float32")),
            "PrimaryCapsules: expects feature maps (batch, H, W, channels), got (1, 4, 4)",
        ),
        (
            lambda: spread_loss(np.array([0, 2]), np.full((2, 3), 0.5, "float32")),
            "spread_loss: targets must be one-hot of the activations' shape (2, 3), got (2,) "
            "(one-hot encode class indices)",
        ),
        (
            lambda: SpreadLoss()(np.array([[0], [2]]), np.full((2, 3), 0.5, "float32")),
            "spread_loss: targets must be one-hot of the activations' shape (2, 3), got (2, 1)",
        ),
        (
            lambda: spread_loss(np.eye(3), np.full((3, 3), 0.5), margin=1.5),
            "spread_loss: the margin must be a number in [0, 1], got 1.5",
        ),
        (lambda: SpreadLoss(-0.1), "SpreadLoss: the margin must be a number in [0, 1], got -0.1"),
        (lambda: SpreadLoss(True), "SpreadLoss: the margin must be a number in [0, 1], got True"),
        (lambda: MarginSchedule(10, stop=2), "MarginSchedule: the margin must be a number in [0, 1], got 2"),
        (lambda: MarginSchedule(0), "MarginSchedule: epochs must be a positive integer, got 0"),
    ],
    ids=[
        "conv_capsules_0",
        "conv_capsules_2.5",
        "class_capsules_True",
        "primary_capsules_0",
        "conv_iterations_0",
        "class_iterations_2.5",
        "routing_iterations_True",
        "conv_kernel_0",
        "conv_kernel_2.5",
        "primary_kernel_True",
        "conv_strides_0",
        "conv_cost_hinton",
        "routing_cost_Paper",
        "class_variance_floor_0",
        "conv_inverse_temperature_inf",
        "conv_normalise_amount_1",
        "class_normalise_cost_yes",
        "class_coordinate_scale_-1",
        "conv_grid_below_kernel",
        "conv_unknown_grid",
        "class_unknown_grid",
        "conv_pose_15",
        "class_pose_8",
        "conv_poses_vs_activations",
        "class_poses_alone",
        "routing_activations_shape",
        "routing_children_negative",
        "primary_rank_3",
        "spread_loss_class_indices",
        "spread_loss_layer_2x1_targets",
        "spread_loss_margin_1.5",
        "spread_margin_-0.1",
        "spread_margin_True",
        "schedule_stop_2",
        "schedule_epochs_0",
    ],
)
def test_em_layers_bad_input_raises_an_error_naming_it(make, message):
    """Each bad argument or input of capsule/em.py's layers, em_routing, spread_loss and MarginSchedule ->
    a ValueError whose text names the function or layer, the problem and the value."""
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


# --------------------------------------------------------------------------------------------------
# attention: Attention, PositionEmbedding, TrainablePositionEmbedding, MaskedGlobalAveragePooling1D


def attention64(layer, q, k, v, k_mask=None):
    """The article's layer (no scale, bias or W^O) in float64: softmax(Q K^T) V per head, heads concatenated."""
    w = {name: np.asarray(np_(getattr(layer, f"w{name}")), "float64") for name in "qkv"}
    Q, K, V = (np.asarray(t, "float64") @ w[n] for t, n in ((q, "q"), (k, "k"), (v, "v")))
    out = np.zeros((q.shape[0], q.shape[1], layer.heads * layer.size_per_head))
    for h in range(layer.heads):
        cols = slice(h * layer.size_per_head, (h + 1) * layer.size_per_head)
        logits = Q[..., cols] @ K[..., cols].transpose(0, 2, 1)
        if k_mask is not None:
            logits = np.where(k_mask[:, None, :], logits, -np.inf)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        out[..., cols] = (e / e.sum(-1, keepdims=True)) @ V[..., cols]
    return out


def masked_inputs(bad, seed=0):
    """Queries (2, 4, 6) and keys (2, 5, 6); row 0 has its last query and last two keys padded, holding ``bad``."""
    rng = np.random.default_rng(seed)
    q, kv = rng.normal(size=(2, 4, 6)).astype("float32"), rng.normal(size=(2, 5, 6)).astype("float32")
    q_mask, k_mask = np.ones((2, 4), bool), np.ones((2, 5), bool)
    q_mask[0, 3:], k_mask[0, 3:] = False, False
    bad_q, bad_kv = q.copy(), kv.copy()
    bad_q[0, 3:], bad_kv[0, 3:] = bad, bad
    return q, kv, bad_q, bad_kv, [q_mask, k_mask]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "matmul"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF, 1e30], ids=["nan", "inf", "-inf", "1e30"])
def test_attention_masked_steps_holding_bad_values_change_nothing(bad, fused):
    """NaN, ±inf or 1e30 at masked queries and keys -> the clean outputs at real positions (to the bit
    nearly), zeros at masked queries, and the clean gradients (0 at masked steps), on both paths."""
    q, kv, bad_q, bad_kv, mask = masked_inputs(bad)
    layer = Attention(2, 3, use_bias=True, output_dim=5, fused=fused)
    clean = np_(layer([q, kv], mask=mask))
    got = np_(layer([bad_q, bad_kv], mask=mask))
    np.testing.assert_allclose(got[mask[0]], clean[mask[0]], atol=1e-6)
    assert np.all(got[0, 3:] == 0)
    pairs = {"q": (lambda t, k: layer([t, k], mask=mask), q, kv, bad_q, bad_kv)}
    pairs["kv"] = (lambda t, o: layer([o, t], mask=mask), kv, q, bad_kv, bad_q)
    for f, x, other, bad_x, bad_other in pairs.values():
        clean_g = grad(lambda t: f(t, other), x)
        got_g = grad(lambda t: f(t, bad_other), bad_x)
        assert np.all(np.isfinite(got_g)) and np.all(got_g[0, 3:] == 0)
        np.testing.assert_allclose(got_g, clean_g, atol=1e-5)


def test_control_without_the_mask_the_bad_values_do_reach_real_positions():
    """Control: the same NaN keys without a mask make every output NaN, so the test above can fail."""
    _, _, bad_q, bad_kv, _ = masked_inputs(NAN)
    assert np.all(np.isnan(np_(Attention(2, 3)([bad_q, bad_kv]))[0]))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "matmul"])
def test_attention_nan_at_a_real_position_propagates(fused):
    """NaN in a real query -> NaN at that query only; NaN in a real key -> NaN at every query attending to it
    (not repaired)."""
    q, kv, _, _, _ = masked_inputs(0.0)
    layer = Attention(2, 3, fused=fused)
    clean = np_(layer([q, kv]))
    q_nan = q.copy()
    q_nan[1, 2, 0] = NAN
    got = np_(layer([q_nan, kv]))
    assert np.all(np.isnan(got[1, 2]))
    others = np.ones((2, 4), bool)
    others[1, 2] = False
    np.testing.assert_allclose(got[others], clean[others], atol=1e-6)
    kv_nan = kv.copy()
    kv_nan[1, 4, 0] = NAN
    got = np_(layer([q, kv_nan]))
    assert np.all(np.isnan(got[1])) and np.all(np.isfinite(got[0]))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "matmul"])
def test_attention_with_a_1e30_key_matches_float64_and_an_overflowing_logit_gives_nan(fused):
    """A real key of 1e30 -> float64's outputs (the softmax saturates, nothing overflows); a query and a key
    both of 1e30 -> their logit overflows float32: NaN at that query (visible), float64's elsewhere."""
    q, kv, _, _, _ = masked_inputs(0.0)
    kv[:, 1] = 1e30 * kv[:, 1]
    layer = Attention(2, 3, fused=fused)
    layer([q, kv])
    np.testing.assert_allclose(np_(layer([q, kv])), attention64(layer, q, kv, kv), rtol=1e-4, atol=1e-5)
    layer.wk.assign(layer.wq)  # the same vector as query and key: its logit is |Q|² > 0 in every head
    q[0, 2] = kv[0, 1]
    got, expected = np_(layer([q, kv])), attention64(layer, q, kv, kv)
    assert np.all(np.isfinite(expected)) and np.all(np.isnan(got[0, 2]))
    others = np.ones((2, 4), bool)
    others[0, 2] = False
    np.testing.assert_allclose(got[others], expected[others], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "matmul"])
def test_attention_real_logits_below_minus_1e9_still_beat_a_masked_key(fused):
    """Real keys whose logits are about -1e12 and a masked key -> float64's softmax over the real keys (a
    masked logit of -1e9, the usual constant, would outrank them all and the output would be 0)."""
    layer = Attention(2, 3, fused=fused)
    q = np.random.default_rng(12).normal(size=(2, 1, 6)).astype("float32")
    layer([q, np.zeros((2, 3, 6), "float32")])
    rng = np.random.default_rng(13)  # the same weights on every backend and in any test order (Keras's
    for w in layer.weights:  # initializers draw from each backend's own generator: an output near 0 by chance)
        w.assign(rng.normal(size=w.shape).astype("float32"))
    layer.wk.assign(layer.wq)
    kv = np.concatenate([-1e12 * q, -2e12 * q, np.ones_like(q)], axis=1)  # logits -1e12 |Q|², -2e12 |Q|²
    k_mask = np.array([[True, True, False]] * 2)
    expected = attention64(layer, q, kv, kv, k_mask)
    assert np.abs(expected).min() > 1e9
    np.testing.assert_allclose(np_(layer([q, kv], mask=[None, k_mask])), expected, rtol=1e-4)


def padded(tokens, left, right):
    return np.array([[0] * left + tokens + [0] * right], "int32")


def position_pipeline(position_layer):
    """The README's pipeline up to the classifier: Embedding(mask_zero) -> position embedding -> Attention
    -> masked mean."""
    keras.utils.set_random_seed(0)
    words = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(30, 8, mask_zero=True)(words)
    x = Attention(2, 4, use_scale=True)(position_layer(x))
    return keras.Model(words, MaskedGlobalAveragePooling1D()(x))


# one sentence of 4 words padded to 12 steps, with 0, 8, 3, 6 and 1 steps on the left
PADDED = np.concatenate([padded([5, 9, 2, 17], left, 8 - left) for left in (0, 8, 3, 6, 1)])


@pytest.mark.parametrize(
    "make",
    [
        lambda count_from: PositionEmbedding(count_from=count_from),
        lambda count_from: PositionEmbedding(4, mode="concat", layout="interleaved", count_from=count_from),
        lambda count_from: TrainablePositionEmbedding(
            16, count_from=count_from, embeddings_initializer="random_normal"
        ),
    ],
    ids=["sinusoid_sum", "sinusoid_concat", "trainable"],
)
def test_count_from_first_token_makes_outputs_independent_of_padding(make):
    """The same sentence with 0-8 padding steps on the left and 8-0 on the right -> identical outputs with
    count_from="first_token"; control: with the default (the article's positions over the padded
    sequence) every amount of left padding changes them."""
    model = position_pipeline(make("first_token"))
    outputs = np_(model(PADDED))
    np.testing.assert_allclose(outputs, outputs[:1].repeat(len(outputs), 0), atol=1e-6)
    default = np_(position_pipeline(make("start"))(PADDED))
    assert np.abs(default[1:] - default[0]).max(-1).min() > 1e-3


def test_count_from_first_token_is_saved_and_reloads(tmp_path):
    """count_from is in get_config and survives a .keras round trip with identical outputs."""
    model = position_pipeline(PositionEmbedding(count_from="first_token"))
    assert model.layers[2].get_config()["count_from"] == "first_token"
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(np_(loaded(PADDED)), np_(model(PADDED)))
    assert TrainablePositionEmbedding(8, count_from="first_token").get_config()["count_from"] == "first_token"


@pytest.mark.parametrize("layer", [PositionEmbedding, lambda **kw: TrainablePositionEmbedding(8, **kw)])
def test_count_from_needs_a_mask_and_a_known_value(layer):
    """count_from="first_token" with no Keras mask -> ValueError saying where the mask comes from (it would
    otherwise count from the start, silently); an unknown count_from -> ValueError naming it."""
    with pytest.raises(ValueError, match=r"reads the Keras mask.*shape \(2, 3, 4\).*mask_zero=True"):
        layer(count_from="first_token")(np.zeros((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match="count_from must be one of"):
        layer(count_from="end")


def test_a_row_of_padding_only_averages_to_zeros():
    """The README pipeline on a batch with a row of padding only -> zeros from the mean for that row (a
    finite input to the classifier), the other rows as computed without it; control:
    GlobalAveragePooling1D gives NaN there."""
    model = position_pipeline(PositionEmbedding())
    tokens = PADDED.copy()
    tokens[0] = 0
    got = np_(model(tokens))
    assert np.all(got[0] == 0)
    np.testing.assert_allclose(got[1:], np_(model(PADDED))[1:], atol=1e-6)
    x = np_(model.layers[1](tokens))  # the embeddings
    assert np.all(np.isnan(np_(keras.layers.GlobalAveragePooling1D()(x, mask=tokens != 0))[0]))


def test_masked_mean_leaves_masked_steps_out_and_matches_numpy():
    """NaN and inf at masked steps -> the mean over the real steps (float64 NumPy), gradient 0 there;
    without a mask, or with time = 0 -> the plain mean, zeros; int input -> floats."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 4, 2)).astype("float32")
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
    bad = x.copy()
    bad[0, 2], bad[0, 3] = NAN, INF
    layer = MaskedGlobalAveragePooling1D()
    expected = np.stack([x[0, :2].mean(0), x[1].mean(0), np.zeros(2)])
    close(np_(layer(bad, mask=mask)), expected)
    assert np.all(grad(lambda t: layer(t, mask=mask), bad)[~mask] == 0)
    close(np_(layer(x)), x.astype("float64").mean(1))
    assert np.all(np_(layer(np.zeros((2, 0, 3), "float32"))) == 0)
    np.testing.assert_array_equal(np_(layer(np.ones((1, 2, 3), "int32"))), np.ones((1, 3), "float32"))


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: Attention(2, 3),
            r"Attention: q must be \(batch, time, 6\) as when the layer was built, got shape \(4, 6\)",
        ),
        (PositionEmbedding, r"PositionEmbedding: input must be \(batch, time, 6\) .*got shape \(4, 6\)"),
        (lambda: TrainablePositionEmbedding(8), r"TrainablePositionEmbedding: input must be \(batch, time, 6\)"),
        (lambda: GCNN(), r"GCNN: expects inputs \(batch, length, 6\) as when the layer was built, got shape \(4, 6\)"),
        (MaskedGlobalAveragePooling1D, r"MaskedGlobalAveragePooling1D: input must be \(batch, time, features\)"),
    ],
    ids=["Attention", "PositionEmbedding", "TrainablePositionEmbedding", "GCNN", "MaskedGlobalAveragePooling1D"],
)
def test_sequence_layers_reject_other_ranks_after_building(make, message):
    """Built on (batch, time, 6), then called on (time, 6) -> ValueError naming the shape, not a reshape,
    broadcast or conv error from inside the backend."""
    layer = make()
    layer(np.zeros((2, 4, 6), "float32"))
    with pytest.raises(ValueError, match=message):
        layer(np.zeros((4, 6), "float32"))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "matmul"])
def test_attention_with_empty_batches_and_lengths_0_and_1(fused):
    """Batch 0 -> (0, T, units); no keys -> zeros (a query with nothing to attend to); no queries ->
    (batch, 0, units); one key -> its value projection (softmax of one logit is 1), as float64 gives."""
    layer = Attention(2, 3, fused=fused)
    q, kv, _, _, _ = masked_inputs(0.0)
    assert np_(layer([q[:0], kv[:0]])).shape == (0, 4, 6)
    assert np.all(np_(layer([q, kv[:, :0]])) == 0) and np_(layer([q, kv[:, :0]])).shape == (2, 4, 6)
    assert np_(layer([q[:, :0], kv])).shape == (2, 0, 6)
    close(np_(layer([q, kv[:, :1]])), attention64(layer, q, kv[:, :1], kv[:, :1]), rtol=1e-4)


@pytest.mark.parametrize(
    "make",
    [
        PositionEmbedding,
        lambda: TrainablePositionEmbedding(8, embeddings_initializer=keras.initializers.RandomUniform(-1, 1)),
    ],
    ids=["PositionEmbedding", "TrainablePositionEmbedding"],
)
def test_position_embeddings_take_ints_float16_empty_batches_and_length_0(make):
    """int32 input -> float32 output equal to the float input's (the table is not truncated to integers);
    float16 -> the same within float16; batch 0 and length 0 -> empty outputs of the right shape."""
    layer = make()
    x = np.random.default_rng(6).integers(-3, 4, (2, 5, 6))
    expected = np_(layer(x.astype("float32")))
    got = np_(layer(x.astype("int32")))
    assert got.dtype == np.float32 and np.abs(expected - np.round(expected)).max() > 0.1
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(np_(layer(x.astype("float16"))).astype("float32"), expected, atol=1e-6)
    assert np_(layer(np.zeros((0, 5, 6), "float32"))).shape == (0, 5, 6)
    assert np_(layer(np.zeros((2, 0, 6), "float32"))).shape == (2, 0, 6)


# --------------------------------------------------------------------------------------------------
# poetry: GCNN, sequence_nll


def gcnn64(layer, x):
    """A * sigmoid(B) with [A | B] = conv1d(x, W), "same" padding, in float64 (+ x when residual)."""
    w = np.asarray(np_(layer.kernel), "float64")
    k, m = w.shape[0], layer.units
    xp = np.pad(np.asarray(x, "float64"), ((0, 0), (k // 2, k // 2), (0, 0)))
    h = sum(xp[:, i : i + x.shape[1]] @ w[i] for i in range(k))
    out = h[..., :m] / (1 + np.exp(-h[..., m:]))
    return out + x if layer.residual else out


def test_gcnn_takes_int_inputs_as_floats():
    """int32 input -> the float64 GCNN of the same values (PyTorch gave all zeros: the kernel cast to int)."""
    layer = GCNN(residual=True)
    x = np.random.default_rng(7).integers(-3, 4, (2, 5, 4))
    got = np_(layer(x.astype("int32")))
    assert got.dtype == np.float32 and np.abs(got).max() > 0.1
    close(got, gcnn64(layer, x), rtol=1e-4)


@pytest.mark.parametrize("length", [0, 1, 2])
def test_gcnn_with_lengths_0_1_2_and_an_empty_batch(length):
    """Length 0 -> (batch, 0, m) on every backend (PyTorch's conv refused it); lengths 1 and 2 -> the
    float64 convolution with zero padding; batch 0 -> (0, n, m)."""
    layer = GCNN(output_dim=3)
    x = np.random.default_rng(8).normal(size=(2, length, 4)).astype("float32")
    got = np_(layer(x))
    assert got.shape == (2, length, 3)
    if length:
        close(got, gcnn64(layer, x), rtol=1e-4)
    assert np_(layer(np.zeros((0, 5, 4), "float32"))).shape == (0, 5, 3)


@pytest.mark.parametrize("bad", [NAN, INF], ids=["nan", "inf"])
def test_gcnn_bad_value_reaches_its_kernel_neighbours_only(bad):
    """NaN or inf at step 3 -> non-finite outputs at steps 2-4 (the kernel of 3 sees it), the float64
    values everywhere else: visible, not repaired, and local."""
    layer = GCNN(output_dim=3)
    x = np.random.default_rng(9).normal(size=(1, 8, 4)).astype("float32")
    x[0, 3, 0] = bad
    got = np_(layer(x))
    assert not np.any(np.isfinite(got[0, 2:5]))
    rest = [0, 1, 5, 6, 7]
    close(got[0, rest], gcnn64(layer, np.where(np.isfinite(x), x, 0))[0, rest], rtol=1e-4)


def nll64(ids, logits):
    logits = np.asarray(logits, "float64")
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    return -np.take_along_axis(log_p, np.asarray(ids, "int64")[..., None], -1)[..., 0].sum(-1)


@pytest.mark.parametrize("bad", [1.5, NAN, INF, -1.0, 7.0], ids=["1.5", "nan", "inf", "-1", "vocab"])
def test_sequence_nll_of_a_bad_float_id_is_nan_for_its_sample(bad):
    """A float id that is not a whole number in [0, V) (Keras hands losses float ids) -> NaN for that
    sample only (a cast would truncate 1.5 to 1, a confident wrong loss); the others -> float64's."""
    rng = np.random.default_rng(10)
    logits = rng.normal(size=(3, 4, 7)).astype("float32")
    ids = rng.integers(0, 7, (3, 4)).astype("float32")
    ids[1, 2] = bad
    got = np_(sequence_nll(ids, logits))
    assert np.isnan(got[1])
    close(got[[0, 2]], nll64(ids[[0, 2]], logits[[0, 2]]))


def test_sequence_nll_shapes_dtypes_and_extreme_logits():
    """ids and logits of different lengths -> ValueError naming both shapes; float16 logits -> float64's
    loss; -inf logit at the target -> inf (probability 0), elsewhere -> finite; +inf logit -> NaN (the
    softmax is undefined); batch 0 -> (0,); length 0 -> 0 (an empty sum)."""
    with pytest.raises(ValueError, match=r"sequence_nll: expects ids .*got \(2, 3\) and \(2, 4, 5\)"):
        sequence_nll(np.zeros((2, 3), "int32"), np.zeros((2, 4, 5), "float32"))
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(3, 4, 5)).astype("float32")
    ids = rng.integers(1, 5, (3, 4))
    close(np_(sequence_nll(ids, logits.astype("float16"))), nll64(ids, logits.astype("float16")), rtol=1e-5)
    logits[0, 0, ids[0, 0]] = -INF
    logits[1, 0, 0] = -INF  # not the target (ids >= 1)
    logits[2, 0, 0] = INF
    got = np_(sequence_nll(ids, logits))
    assert got[0] == INF and np.isnan(got[2])
    close(got[1], nll64(ids[1:2], logits[1:2])[0])
    assert np_(sequence_nll(ids[:0], logits[:0])).shape == (0,)
    np.testing.assert_array_equal(np_(sequence_nll(ids[:, :0], logits[:, :0])), [0.0, 0.0, 0.0])


# --------------------------------------------------------------------------------------------------
# compiled: the same answers inside a compiled predict (XLA on TensorFlow and JAX), where nothing can raise


def test_compiled_predict_keeps_the_answers():
    """squash and CapsuleLength at 3e38, 1e-30 and 0, swish at -inf, and attention with NaN at masked keys,
    inside ``predict`` compiled with XLA (``jit_compile=True`` on TensorFlow; JAX always compiles) -> the
    eager answers. XLA rewrites a division by a broadcast scale as a product with its reciprocal, which is
    0 in float32 for a scale of 3e38: the squash's scale is a power of two kept within range for this."""
    capsules = rows([3e38, -2e38, 1e38], [1e-30, 2e-30], [], [-INF, 3.0], [0.5, 0.5])
    x = keras.Input((4,))
    squashed = keras.Model(x, [keras.layers.Lambda(squash)(x), CapsuleLength()(x), Swish()(x)])
    squashed.compile(jit_compile=BACKEND == "tensorflow")
    for got, eager in zip(squashed.predict(capsules, verbose=0), squashed(capsules)):
        np.testing.assert_allclose(got, np_(eager), rtol=1e-6, atol=TINY)  # XLA may round differently
    np.testing.assert_allclose(
        np.linalg.norm(squashed.predict(capsules, verbose=0)[0][[0, 3]], axis=-1), 1.0, atol=1e-6
    )

    q, kv, bad_q, bad_kv, mask = masked_inputs(NAN)
    inputs = [
        keras.Input((4, 6)),
        keras.Input((5, 6)),
        keras.Input((4,), dtype="bool"),
        keras.Input((5,), dtype="bool"),
    ]
    layer = Attention(2, 3, fused=False)
    model = keras.Model(inputs, layer(inputs[:2], mask=inputs[2:]))
    model.compile(jit_compile=BACKEND == "tensorflow")
    got = model.predict([bad_q, bad_kv, *mask], verbose=0)
    clean = np_(layer([q, kv], mask=mask))
    np.testing.assert_allclose(got[mask[0]], clean[mask[0]], atol=1e-6)
    assert np.all(got[0, 3:] == 0)


# --------------------------------------------------------------------------------------------------
# review of the catalogue: silent wrong answers, NaNs and raw tracebacks found afterwards


def test_attention_keys_and_values_of_different_lengths_raise():
    """Keys of 5 steps and values of 3 (PyTorch's fused kernel returns numbers for this) -> a ValueError
    naming both shapes, on the fused and the matmul path, static shapes and eager calls alike; the same
    lengths (the control) work."""
    rng = np.random.default_rng(0)
    q, kv = rng.normal(size=(2, 4, 6)).astype("float32"), rng.normal(size=(2, 5, 6)).astype("float32")
    for fused in (True, False):
        layer = Attention(2, 3, fused=fused)
        assert np_(layer([q, kv, kv])).shape == (2, 4, 6)
        with pytest.raises(ValueError, match=r"same length.*\(2, 5, 6\).*\(2, 3, 6\)"):
            layer([q, kv, kv[:, :3]])
        with pytest.raises(ValueError, match=r"same length.*\(2, 3, 6\).*\(2, 5, 6\)"):
            layer([q, kv[:, :3], kv])
    with pytest.raises(ValueError, match="same length"):
        Attention(2, 3)([keras.Input((4, 6)), keras.Input((5, 6)), keras.Input((3, 6))])


def kl_loss(inputs, **kwargs):
    layer = KLDivergence(**kwargs)
    layer(inputs)
    return float(np_(layer.losses[0]))


@pytest.mark.parametrize("free_bits", [0.0, 1e-12])
@pytest.mark.parametrize("shape", [(2,), (4, 3, 2)], ids=["rank1", "rank3"])
def test_kl_divergence_other_ranks_raise(shape, free_bits):
    """KLDivergence of latents (d,) or (batch, t, d) (the free-bits and the plain path averaged them
    differently) -> a ValueError naming the shape, on both paths."""
    m = np.zeros(shape, "float32")
    with pytest.raises(ValueError, match=rf"z_mean must be \(batch, d\), got shape \({shape[0]},"):
        kl_loss([m, m], free_bits=free_bits)


@pytest.mark.parametrize("free_bits", [0.0, 0.5])
def test_kl_divergence_of_an_empty_batch_adds_zero(free_bits):
    """KLDivergence on a batch of 0 -> adds 0 (not the NaN of a mean over no samples); the control, a
    batch of 4, adds the float64 batch mean (floored per dimension with free bits)."""
    rng = np.random.default_rng(1)
    m, lv = rng.normal(size=(4, 2)).astype("float32"), rng.normal(size=(4, 2)).astype("float32")
    assert kl_loss([m[:0], lv[:0]], free_bits=free_bits) == 0.0
    per = 0.5 * (m.astype("float64") ** 2 + np.exp(lv.astype("float64")) - lv - 1)
    close(kl_loss([m, lv], free_bits=free_bits), np.maximum(per.mean(0), free_bits).sum())


def bernoulli_nll64(x, p):
    x, p = np.asarray(x, "float64"), np.clip(np.asarray(p, "float64"), 1e-7, 1 - 1e-7)
    return -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(-1)


def test_bernoulli_nll_of_logits_is_nan():
    """bernoulli_nll with x_decoded outside [0, 1] (logits: a forgotten sigmoid) -> NaN for that sample
    (it was clipped to 1 - 1e-7: a confident wrong loss); the other sample keeps its float64 value."""
    x = np.array([[1.0, 0.0], [1.0, 0.0]], "float32")
    p = np.array([[3.5, -2.0], [0.7, 0.2]], "float32")
    got = np_(bernoulli_nll(x, p))
    assert np.isnan(got[0])
    close(got[1], bernoulli_nll64(x[1], p[1]))


def margin64(y, p):
    y, p = np.asarray(y, "float64"), np.asarray(p, "float64")
    return (y * np.maximum(0.9 - p, 0) ** 2 + 0.25 * (1 - y) * np.maximum(p - 0.1, 0) ** 2).sum(-1)


def test_margin_loss_of_sparse_labels_raises():
    """margin_loss with class indices (3,) for scores (3, 3) (they broadcast to a wrong loss) -> a
    ValueError naming both shapes."""
    p = np.eye(3, dtype="float32") * 0.95
    with pytest.raises(ValueError, match=r"one-hot.*\(3,\) and \(3, 3\)"):
        margin_loss(np.array([0, 1, 2]), p)
    with pytest.raises(ValueError, match=r"\(1, 1\) and \(1, 3\)"):
        margin_loss(np.array([[2]]), p[:1])


@pytest.mark.parametrize("label", [2.0, -1.0])
def test_margin_loss_of_labels_outside_0_1_is_nan(label):
    """margin_loss with y_true 2 or -1 (not a one-hot) -> NaN for that sample; the other sample keeps
    its float64 value."""
    y = np.array([[label, 0.0], [1.0, 0.0]], "float32")
    p = np.array([[0.95, 0.0], [0.5, 0.3]], "float32")
    got = np_(margin_loss(y, p))
    assert np.isnan(got[0])
    close(got[1], margin64(y[1], p[1]))


def _batch_one_cases():
    rng = np.random.default_rng(2)
    q, kv = rng.normal(size=(2, 4, 6)).astype("float32"), rng.normal(size=(2, 5, 6)).astype("float32")
    m = np.zeros((4, 2), "float32")
    one = np.ones((1, 4), bool)
    return {
        "attention_key_mask": lambda: Attention(2, 3)([q, kv], mask=[None, np.ones((1, 5), bool)]),
        "attention_attention_mask": lambda: Attention(2, 3)([q, kv], attention_mask=np.ones((1, 4, 5), bool)),
        "pooling_mask": lambda: MaskedGlobalAveragePooling1D()(q, mask=one),
        "position_first_token_mask": lambda: PositionEmbedding(count_from="first_token")(q, mask=one),
        "sampling": lambda: Sampling(seed=1)([m[:1], m]),
        "kl_divergence": lambda: kl_loss([m, m[:1]]),
        "bernoulli_nll": lambda: bernoulli_nll(np.ones((1, 2), "float32"), np.full((3, 2), 0.5, "float32")),
    }


@pytest.mark.parametrize("case", list(_batch_one_cases()))
def test_batch_of_one_against_a_batch_raises(case):
    """A mask or paired input of batch 1 against an input of batch 2 to 4 (it broadcast over every
    row) -> a ValueError naming the shapes."""
    with pytest.raises(ValueError, match=r"\(1, |batch 1"):
        _batch_one_cases()[case]()


def test_masked_pooling_does_not_overflow():
    """MaskedGlobalAveragePooling1D of 1000 float16 steps of 100 (a float16 sum overflows: the control)
    and of four float32 steps of 3e38, masked and not -> the mean, 100 and 3e38, in the input's dtype."""
    assert np.isinf(np.full(1000, 100.0, "float16").sum(dtype="float16"))  # control
    x16 = np.full((1, 1000, 2), 100.0, "float16")
    got = MaskedGlobalAveragePooling1D(dtype="float16")(x16, mask=np.ones((1, 1000), bool))
    assert keras.backend.standardize_dtype(got.dtype) == "float16"
    np.testing.assert_array_equal(np_(got), 100.0)
    x = np.full((1, 4, 2), 3e38, "float32")
    close(np_(MaskedGlobalAveragePooling1D()(x)), np.full((1, 2), 3e38))
    close(np_(MaskedGlobalAveragePooling1D()(x, mask=np.array([[True, True, True, False]]))), np.full((1, 2), 3e38))


def log_weights_and_draws(mean, log_var, seed=3):
    """log w - log p(x|z) from log_importance_weights, and the z the decoder saw."""
    seen = []
    dense = keras.layers.Dense(3, activation="sigmoid")

    def decoder(z):
        seen.append(np_(z))
        return dense(z)

    log_w, log_px = log_importance_weights(
        decoder, np.full((1, 3), 0.5, "float32"), mean, log_var, k=4, seed=seed, return_log_px=True
    )
    return np_(log_w) - np_(log_px), seen[0].reshape(1, 4, -1)


def test_log_importance_weights_of_a_confident_posterior():
    """log_importance_weights with log_var -100 (exp(100) overflows float32, and (z - mean)^2 exp(-log_var)
    was 0 * inf = NaN: the control) -> log p(z) - log q(z|x) of the float64 formula with the same draws;
    on normal inputs, the float64 value of the textbook formula."""
    rng = np.random.default_rng(4)
    mean, lv = rng.normal(size=(1, 2)).astype("float32"), rng.normal(size=(1, 2)).astype("float32")
    got, z = log_weights_and_draws(mean, lv)
    z64, m64, lv64 = z.astype("float64"), mean[:, None].astype("float64"), lv[:, None].astype("float64")
    log2pi = np.log(2 * np.pi)
    log_pz = -0.5 * (z64**2 + log2pi).sum(-1)
    log_qz = -0.5 * ((z64 - m64) ** 2 * np.exp(-lv64) + lv64 + log2pi).sum(-1)
    close(got, log_pz - log_qz, scale=1e-5)

    _, eps = log_weights_and_draws(np.zeros((1, 2), "float32"), np.zeros((1, 2), "float32"))  # z = eps
    confident = np.full((1, 2), -100.0, "float32")
    got, z = log_weights_and_draws(mean, confident)
    eps = eps.astype("float64")
    z64 = mean[:, None].astype("float64") + np.exp(-50.0) * eps
    expected = -0.5 * (z64**2 + log2pi).sum(-1) + 0.5 * (eps**2 - 100.0 + log2pi).sum(-1)
    close(got, expected)
    assert np.isnan(np_(gaussian_log_density(z, mean[:, None], confident[:, None]))).all()  # control


@pytest.mark.parametrize("constant", [1e-40, 1e-50, 0.0, INF, NAN, "1"])
def test_squash_constant_below_the_smallest_normal_raises(constant):
    """squash and Capsule with a constant below float32's smallest normal number (a zero capsule gave
    0 / 0 = NaN), not finite or not a number -> a ValueError naming it; the control, twice the smallest
    normal number, squashes zeros to zeros."""
    with pytest.raises(ValueError, match=r"constant must be > 0 and finite, at least 1.18e-38"):
        squash(np.zeros((1, 3), "float32"), constant=constant)
    with pytest.raises(ValueError, match="squash_constant must be > 0 and finite"):
        Capsule(2, 3, squash_constant=constant)
    tiny = 2 * float(np.finfo("float32").tiny)
    np.testing.assert_array_equal(np_(squash(np.zeros((1, 3), "float32"), constant=tiny)), 0.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: sinusoidal_position_embedding(-1, 4), "length must be an integer >= 0, got -1"),
        (lambda: sinusoidal_position_embedding(True, 4), "length must be an integer >= 0, got True"),
        (lambda: sinusoidal_position_embedding("3", 4), "length must be an integer >= 0, got '3'"),
        (lambda: sinusoidal_position_embedding(2.5, 4), "length must be an integer >= 0, got 2.5"),
        (lambda: sinusoidal_position_embedding(3, 4, base=1.0), "base must be a number > 1, got 1.0"),
        (lambda: sinusoidal_position_embedding(3, 4, base=NAN), "base must be a number > 1, got nan"),
        (lambda: PositionEmbedding(base=NAN), "base must be a number > 1"),
        (lambda: squash(np.ones((1, 2), "float32"), axis=5), r"axis must be an integer in \[-2, 2\).*got 5"),
        (lambda: squash(np.float32(3.0)), "squash: x must have at least one axis"),
        (lambda: sequence_nll(np.zeros((1, 2), "int32"), np.zeros((1, 2, 0), "float32")), "vocabulary of 0"),
    ],
    ids=[
        "length_-1",
        "length_True",
        "length_str",
        "length_2.5",
        "base_1",
        "base_nan",
        "layer_base_nan",
        "squash_axis_5",
        "squash_scalar",
        "nll_vocab_0",
    ],
)
def test_bad_arguments_raise_a_clear_error(call, match):
    """Bad lengths, bases, axes, scalars and an empty vocabulary -> a ValueError naming the value, not a
    traceback from inside the backend."""
    with pytest.raises(ValueError, match=match):
        call()


def test_bool_and_int_inputs_are_taken_as_numbers():
    """sequence_nll with bool ids -> the loss of ids 0 and 1; margin_loss with int scores -> the float64
    loss; Sampling of int inputs -> float draws (TensorFlow refused these with its own traceback)."""
    logits = np.random.default_rng(5).normal(size=(1, 2, 3)).astype("float32")
    close(np_(sequence_nll(np.array([[True, False]]), logits)), np_(sequence_nll(np.array([[1, 0]]), logits)))
    close(np_(margin_loss(np.array([[1.0, 0.0]], "float32"), np.array([[1, 1]], "int32"))), margin64([1, 0], [1, 1]))
    z = np_(Sampling(seed=1)([np.zeros((2, 2), "int32"), np.zeros((2, 2), "int32")]))
    assert z.dtype == np.float32 and np.isfinite(z).all() and np.any(z != 0)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda v: Swish(trainable_beta=v), "trainable_beta must be True or False"),
        (lambda v: Capsule(2, 3, share_weights=v), "share_weights must be True or False"),
        (lambda v: Attention(2, 3, use_scale=v), "use_scale must be True or False"),
        (lambda v: GCNN(residual=v), "residual must be True or False"),
    ],
    ids=["swish", "capsule", "attention", "gcnn"],
)
def test_flags_given_strings_raise(make, match):
    """A flag given "no" or "False" (truthy strings: they meant True) -> a ValueError naming it; the
    control, np.bool_(False), is taken as False."""
    for value in ("no", "False", 0):
        with pytest.raises(ValueError, match=match):
            make(value)
    assert make(np.bool_(False)).get_config()[match.split()[0]] is False


@pytest.mark.parametrize("kwargs", [{"output_dim": True}, {"kernel_size": True}], ids=["output_dim", "kernel_size"])
def test_gcnn_bool_sizes_raise(kwargs):
    """GCNN(output_dim=True) or GCNN(kernel_size=True) (True is the int 1 to Python) -> a ValueError."""
    with pytest.raises(ValueError, match=f"GCNN: {next(iter(kwargs))} must be a positive"):
        GCNN(**kwargs)
