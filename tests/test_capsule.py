"""capsule/: squash and the three routings against hand-computed cases and an explicit-loop oracle,
routing invariants, saving, XLA, and the two-digit experiment's pieces."""

import math

import numpy as np
import pytest
from conftest import BACKEND, REPO, check_smoke_run, grad, run_copied_alone

pytest.importorskip(BACKEND, reason=f"KERAS_BACKEND={BACKEND} but {BACKEND} is not installed")
import keras  # noqa: E402

from capsule.layers import ROUTINGS, Capsule, CapsuleLength, margin_loss, squash  # noqa: E402

np_ = keras.ops.convert_to_numpy


def np_squash(x, constant):
    s = np.sum(x**2, -1, keepdims=True)
    return s / (constant + s) * x / np.sqrt(s + 1e-300)


def oracle(kernel, u, num_capsule, dim_capsule, routings, routing, constant, shared=True):
    """Routing written out with scalar loops over inputs i and outputs j, in float64."""
    u = np.asarray(u, "float64")
    kernel = np.asarray(kernel, "float64")
    batch, n, _ = u.shape
    out = np.zeros((batch, num_capsule, dim_capsule))
    coupling = np.zeros((batch, n, num_capsule))
    for b_ in range(batch):
        votes = np.zeros((num_capsule, n, dim_capsule))
        for i in range(n):
            w = kernel if shared else kernel[i]
            for j in range(num_capsule):
                votes[j, i] = u[b_, i] @ w[:, j * dim_capsule : (j + 1) * dim_capsule]
        logits = np.zeros((num_capsule, n))
        for it in range(routings):
            c = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
            s = np.array([sum(c[j, i] * votes[j, i] for i in range(n)) for j in range(num_capsule)])
            last = it == routings - 1
            if routing == "kmeans":
                v = np_squash(s, constant) if last else s / np.sqrt(np.sum(s**2, -1, keepdims=True) + 1e-12)
            else:
                v = np_squash(s, constant)
            if not last:
                agree = np.array([[votes[j, i] @ v[j] for i in range(n)] for j in range(num_capsule)])
                logits = logits + agree if routing == "paper" else agree
        out[b_] = v
        coupling[b_] = c.T
    return out, coupling


# --------------------------------------------------------------------------------------------------
# squash


@pytest.mark.layers
@pytest.mark.parametrize("constant", [1.0, 0.5])
def test_squash_keeps_direction_and_maps_length_below_one(constant):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(50, 8)) * 10.0 ** rng.integers(-3, 4, (50, 1)), np.full((1, 8), 1e4)]).astype(
        "float32"
    )
    y = np_(squash(x, constant=constant))
    norm_x, norm_y = np.linalg.norm(x, axis=-1), np.linalg.norm(y, axis=-1)
    assert np.all(np.isfinite(y)) and np.all(norm_y <= 1)
    assert np.all(norm_y[norm_x < 1e3] < 1)  # beyond ~3e3, 1 - C/||x||^2 rounds to 1 in float32
    np.testing.assert_allclose(norm_y, norm_x**2 / (constant + norm_x**2), rtol=1e-4, atol=1e-7)
    cos = np.sum(x * y, -1) / (norm_x * norm_y)
    np.testing.assert_allclose(cos[norm_y > 1e-6], 1.0, atol=1e-5)
    np.testing.assert_allclose(y, np_squash(x.astype("float64"), constant), rtol=1e-4, atol=1e-7)


@pytest.mark.layers
def test_squash_is_safe_at_zero():
    x = np.zeros((3, 16), "float32")
    assert np.all(np_(squash(x)) == 0)
    g = grad(lambda t: squash(t, constant=0.5), x)
    assert np.all(np.isfinite(g)) and np.all(g == 0)
    tiny = np.full((2, 4), 1e-20, "float32")
    assert np.all(np.isfinite(grad(squash, tiny)))


# --------------------------------------------------------------------------------------------------
# Capsule: hand-computed cases and the loop oracle


def votes_layer(routing, routings):
    """Two inputs u_a = [1, 0], u_b = [0, 1]; two outputs of one dimension with W_0 = [1, 1]^T and
    W_1 = [1, -1]^T, so the votes are: output 0 gets (1, 1), output 1 gets (1, -1)."""
    layer = Capsule(2, 1, routings=routings, routing=routing)
    layer.build((None, 2, 2))
    layer.kernel.assign(np.array([[1.0, 1.0], [1.0, -1.0]], "float32"))
    u = np.array([[[1.0, 0.0], [0.0, 1.0]]], "float32")
    return layer, u


sq = lambda s, c: s * s / (c + s * s)  # squash of a positive scalar
sigmoid = lambda t: 1 / (1 + math.exp(-t))


@pytest.mark.layers
@pytest.mark.parametrize(
    "routing, expected",
    [
        # iteration 1: c = 1/2, s_0 = (1 + 1)/2 = 1, s_1 = (1 - 1)/2 = 0.
        # article: v_0 = sq(1, .5) = 2/3, b_0i = 2/3, b_1i = 0; iteration 2: c_i0 = sigmoid(2/3), s_0 = 2 c_i0
        ("article", sq(2 * sigmoid(sq(1, 0.5)), 0.5)),
        # paper: C = 1, v_0 = 1/2, b_0i = 1/2; iteration 2: s_0 = 2 sigmoid(1/2)
        ("paper", sq(2 * sigmoid(0.5), 1.0)),
        # kmeans: the centre of output 0 is 1 / |1| = 1, b_0i = 1; iteration 2: s_0 = 2 sigmoid(1), squashed once
        ("kmeans", sq(2 * sigmoid(1.0), 0.5)),
    ],
)
def test_hand_computed_two_iterations(routing, expected):
    layer, u = votes_layer(routing, 2)
    v, c = layer(u, return_coupling=True)
    v, c = np_(v), np_(c)
    np.testing.assert_allclose(v[0, :, 0], [expected, 0.0], atol=1e-6)
    b0 = {"article": sq(1, 0.5), "paper": 0.5, "kmeans": 1.0}[routing]
    np.testing.assert_allclose(c[0, :, 0], [sigmoid(b0)] * 2, atol=1e-6)  # c_i0 for both inputs


@pytest.mark.layers
def test_hand_computed_three_iterations_separate_paper_from_article():
    """At r = 3 the paper accumulates logits and the article replaces them."""
    results = {}
    for routing in ("article", "paper"):
        layer, u = votes_layer(routing, 3)
        results[routing] = float(np_(layer(u))[0, 0, 0])
    v1 = sq(2 * sigmoid(sq(1, 0.5)), 0.5)  # article after two iterations, as above
    np.testing.assert_allclose(results["article"], sq(2 * sigmoid(v1), 0.5), atol=1e-6)  # b_0i = v_0, replaced
    p1 = sq(2 * sigmoid(0.5), 1.0)
    np.testing.assert_allclose(results["paper"], sq(2 * sigmoid(0.5 + p1), 1.0), atol=1e-6)  # b_0i = 1/2 + v_0


@pytest.mark.layers
def test_one_output_capsule_is_the_squashed_sum_of_votes():
    layer = Capsule(1, 2, routings=3, routing="article")
    layer.build((None, 2, 2))
    layer.kernel.assign(np.eye(2, dtype="float32"))
    u = np.array([[[3.0, 0.0], [0.0, 4.0]]], "float32")  # the votes sum to (3, 4), length 5
    np.testing.assert_allclose(np_(layer(u))[0, 0], 25 / 25.5 * np.array([0.6, 0.8]), atol=1e-6)


@pytest.mark.layers
@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("routings", [1, 3, 5])
@pytest.mark.parametrize("shared", [True, False])
def test_matches_the_loop_oracle(routing, routings, shared):
    rng = np.random.default_rng(routings)
    u = rng.normal(size=(3, 7, 5)).astype("float32")
    layer = Capsule(4, 3, routings=routings, routing=routing, share_weights=shared)
    v, c = layer(u, return_coupling=True)
    expected, coupling = oracle(np_(layer.kernel), u, 4, 3, routings, routing, layer.constant, shared)
    np.testing.assert_allclose(np_(v), expected, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(np_(c), coupling, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Capsule: invariants


@pytest.mark.layers
@pytest.mark.parametrize("routing", ROUTINGS)
def test_coupling_coefficients_sum_to_one_over_outputs_and_lengths_below_one(routing):
    u = np.random.default_rng(1).normal(size=(4, 20, 8)).astype("float32") * 3
    v, c = Capsule(10, 16, routing=routing)(u, return_coupling=True)
    v, c = np_(v), np_(c)
    assert c.shape == (4, 20, 10) and v.shape == (4, 10, 16)
    np.testing.assert_allclose(c.sum(-1), 1.0, atol=1e-5)
    assert np.all(c >= 0) and np.all(np.linalg.norm(v, axis=-1) < 1)
    np.testing.assert_allclose(np_(CapsuleLength()(v)), np.linalg.norm(v, axis=-1), atol=1e-6)


@pytest.mark.layers
@pytest.mark.parametrize("routing", ROUTINGS)
def test_shared_weights_make_the_output_invariant_to_input_order(routing):
    rng = np.random.default_rng(2)
    u = rng.normal(size=(2, 30, 8)).astype("float32")
    perm = rng.permutation(30)
    shared = Capsule(10, 16, routing=routing)
    np.testing.assert_allclose(np_(shared(u[:, perm])), np_(shared(u)), atol=1e-5)
    _, c = shared(u, return_coupling=True)
    _, c_perm = shared(u[:, perm], return_coupling=True)
    np.testing.assert_allclose(np_(c_perm), np_(c)[:, perm], atol=1e-5)  # coefficients move with their input
    unshared = Capsule(10, 16, routing=routing, share_weights=False)  # the check can fail
    assert np.abs(np_(unshared(u[:, perm])) - np_(unshared(u))).max() > 1e-3


@pytest.mark.layers
def test_shared_weights_take_any_number_of_input_capsules():
    layer = Capsule(10, 16, routing="kmeans")
    rng = np.random.default_rng(4)
    for n in (64, 176):  # a 28x28 image gives 8x8 positions, a 56x28 one 22x8
        u = rng.normal(size=(2, n, 128)).astype("float32") * 0.1
        v = np_(layer(u))
        expected, _ = oracle(np_(layer.kernel), u, 10, 16, 3, "kmeans", 0.5)
        np.testing.assert_allclose(v, expected, atol=1e-5)
    unshared = Capsule(10, 16, share_weights=False)
    unshared(np.ones((2, 64, 128), "float32"))
    with pytest.raises(ValueError, match="built for 64 input capsules"):
        unshared(np.ones((2, 176, 128), "float32"))


@pytest.mark.layers
def test_coupling_coefficients_come_out_of_a_functional_model():
    inputs = keras.Input((None, 8))
    v, c = Capsule(4, 16, routing="paper")(inputs, return_coupling=True)
    assert tuple(v.shape) == (None, 4, 16) and tuple(c.shape) == (None, None, 4)
    model = keras.Model(inputs, [v, c])
    got_v, got_c = model(np.random.default_rng(5).normal(size=(2, 30, 8)).astype("float32"))
    assert tuple(got_v.shape) == (2, 4, 16) and tuple(got_c.shape) == (2, 30, 4)
    np.testing.assert_allclose(np_(got_c).sum(-1), 1.0, atol=1e-5)


@pytest.mark.layers
@pytest.mark.parametrize("routing", ROUTINGS)
def test_16_bit_policies_route_in_float32_without_nan(routing):
    keras.utils.set_random_seed(6)  # the weights too: about 1 draw in 300 is past atol=2e-3
    u = np.zeros((2, 5, 8), "float32")
    u[0] = np.random.default_rng(6).normal(size=(5, 8))
    layer = Capsule(3, 4, routing=routing, dtype="mixed_float16")
    v = layer(u)
    lengths = np_(CapsuleLength(dtype="mixed_float16")(v))
    assert np_(v).dtype == np.float16 and np.all(np.isfinite(np_(v))) and np.all(np.isfinite(lengths))
    assert np.all(np_(v)[1] == 0)  # zero input, zero output
    full = Capsule(3, 4, routing=routing)
    full(u)
    full.set_weights(layer.get_weights())
    np.testing.assert_allclose(np_(v).astype("float32"), np_(full(u)), atol=2e-3)


@pytest.mark.layers
def test_gradients_flow_through_routing():
    u = np.random.default_rng(3).normal(size=(2, 6, 4)).astype("float32")
    for routing in ROUTINGS:
        layer = Capsule(3, 5, routing=routing)
        g = grad(lambda x, layer=layer: CapsuleLength()(layer(x)), u)
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
        # central differences on one coordinate
        eps = 1e-2
        up, down = u.copy(), u.copy()
        up[0, 1, 2] += eps
        down[0, 1, 2] -= eps
        f = lambda x, layer=layer: float(np_(CapsuleLength()(layer(x))).sum())
        np.testing.assert_allclose(g[0, 1, 2], (f(up) - f(down)) / (2 * eps), rtol=2e-2, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# margin loss, errors, saving, XLA


@pytest.mark.layers
def test_margin_loss_closed_form():
    y = np.array([[0, 1, 0], [1, 0, 0]], "float32")
    p = np.array([[0.95, 0.5, 0.05], [0.2, 0.3, 0.12]], "float32")
    expected = [0.25 * 0.85**2 + 0.4**2, 0.7**2 + 0.25 * 0.2**2 + 0.25 * 0.02**2]
    np.testing.assert_allclose(np_(margin_loss(y, p)), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="one-hot with 3 classes"):
        margin_loss(np.zeros((2, 1), "float32"), p)


@pytest.mark.layers
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Capsule(0, 16), "num_capsule must be a positive integer"),
        (lambda: Capsule(10, 16, routings=0), "routings must be a positive integer"),
        (lambda: Capsule(10, 16, routing="em"), "routing must be one of"),
        (lambda: Capsule(10, 16, squash_constant=0), "squash_constant must be > 0"),
        (lambda: Capsule(10, 16)(np.zeros((2, 8), "float32")), r"input must be capsules \(batch, n, dim\)"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.layers
def test_unshared_weights_need_a_fixed_number_of_capsules():
    inputs = keras.Input((None, 8))
    with pytest.raises(ValueError, match="share_weights=False needs a fixed number"):
        Capsule(4, 4, share_weights=False)(inputs)


@pytest.mark.layers
def test_keras_save_and_load_round_trip(tmp_path):
    images = np.random.default_rng(0).random((3, 14, 10, 1)).astype("float32")
    inputs = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(8, 3)(inputs)
    x = keras.layers.Reshape((-1, 8))(x)
    a = Capsule(5, 4, routing="kmeans", squash_constant=0.7, kernel_regularizer="l2")(x)
    b = Capsule(5, 4, routing="paper", routings=2)(x)
    scores = CapsuleLength()(keras.layers.Add()([a, b]))
    model = keras.Model(inputs, scores)
    model.compile("adam", margin_loss)
    model.fit(images, keras.utils.to_categorical([0, 1, 2], 5), verbose=0)
    path = tmp_path / "capsule.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # margin_loss is registered: the compiled loss comes back
    np.testing.assert_array_equal(np_(loaded(images)), np_(model(images)))
    assert loaded.evaluate(images, keras.utils.to_categorical([0, 1, 2], 5), verbose=0) == pytest.approx(
        model.evaluate(images, keras.utils.to_categorical([0, 1, 2], 5), verbose=0), rel=1e-5
    )
    caps = [layer for layer in loaded.layers if isinstance(layer, Capsule)]
    assert caps[0].routing == "kmeans" and caps[0].constant == 0.7 and caps[1].routings == 2


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="jit_compile=True is the TensorFlow/XLA check (JAX always compiles)"
)
@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("shared", [True, False])
def test_trains_and_predicts_under_xla_jit_compile(routing, shared):
    """The experiment's shape of model (shared weights: images of any size, capsules from a Reshape)
    and a fixed-size one with per-input weights."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 96)
    images = rng.normal(size=(96, 6, 6, 1)).astype("float32") * 0.3
    images[np.arange(96), labels * 2, :, 0] += 2.0  # the class is which row is bright
    y = keras.utils.to_categorical(labels, 3)

    def build():
        inputs = keras.Input((None, None, 1) if shared else (6, 6, 1))
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
        x = keras.layers.Reshape((-1, 8) if shared else (36, 8))(x)
        return keras.Model(inputs, CapsuleLength()(Capsule(3, 4, routing=routing, share_weights=shared)(x)))

    keras.utils.set_random_seed(0)
    model = build()
    model.compile(keras.optimizers.Adam(0.02), margin_loss, jit_compile=True)
    loss = model.fit(images, y, epochs=30, batch_size=32, verbose=0).history["loss"]
    assert loss[-1] < 0.5 * loss[0]
    eager = build()
    eager.set_weights(model.get_weights())
    np.testing.assert_allclose(model.predict(images, verbose=0), eager.predict(images, verbose=0), atol=1e-5)
    if shared:  # a bigger image through the compiled model
        assert model.predict(np.zeros((2, 12, 6, 1), "float32"), verbose=0).shape == (2, 3)


def test_layers_py_runs_copied_alone(tmp_path):
    script = (
        "import numpy as np\n"
        "from layers import Capsule, CapsuleLength\n"
        "u = np.random.default_rng(0).normal(size=(2, 9, 8)).astype('float32')\n"
        "print(tuple(CapsuleLength()(Capsule(10, 16, routing='kmeans')(u)).shape))\n"
    )
    assert run_copied_alone(REPO / "capsule" / "layers.py", script, tmp_path) == "(2, 10)"


# --------------------------------------------------------------------------------------------------
# The experiment's pieces


def test_two_digit_images_stack_pairs_with_different_labels():
    from capsule import train

    rng = np.random.default_rng(0)
    x = rng.random((200, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, 200)
    images, labels = train.two_digit_images(x, y, seed=5)
    partner = np.random.default_rng(5).permutation(200)
    keep = y != y[partner]
    assert images.shape == (keep.sum(), 56, 28, 1) and labels.shape == (keep.sum(), 2)
    np.testing.assert_array_equal(images[:, :28], x[keep])
    np.testing.assert_array_equal(images[:, 28:], x[partner][keep])
    assert np.all(labels[:, 0] < labels[:, 1])  # sorted, never equal
    again, _ = train.two_digit_images(x, y, seed=5)
    np.testing.assert_array_equal(again, images)


def test_pair_scores_count_unordered_top2_and_confidence():
    from capsule import train

    labels = np.array([[1, 3], [0, 2], [4, 5], [6, 7]])
    scores = np.full((4, 10), 0.01)
    scores[0, [3, 1]] = [0.9, 0.8]  # right pair, confident
    scores[1, [0, 2]] = [0.3, 0.95]  # right pair (order swapped), 2nd score 0.3
    scores[2, [4, 9]] = [0.9, 0.8]  # wrong pair
    scores[3, [7, 6]] = [0.99, 0.51]  # right, just confident
    acc1, acc2 = train.pair_scores(scores, labels)
    assert acc1 == 0.75 and acc2 == 0.5
    tie = np.array([[0.1, 0.9, 0.9, 0.9, 0.2]])  # ties go to the later classes, as argsort()[:, -2:] does
    assert train.pair_scores(tie, np.array([[2, 3]])) == (1.0, 1.0)


def test_models_have_the_articles_size_and_take_two_digit_images():
    from capsule import train

    for name, spec in train.MODELS.items():
        if spec["head"] == "em":  # the EM models: test_em_model_* below
            continue
        model = train.build_model(spec["head"], spec["routing"])
        # trunk 259,008 + Dense 128 and Dense 10 (CNN) or one 128 x 160 vote matrix (capsules): ~270k +- 3%
        assert model.count_params() == (276_810 if name == "cnn" else 279_488), name
        if name != "cnn":
            capsules = keras.Model(model.input, model.get_layer("capsule").input)
            assert capsules(np.zeros((1, 28, 28, 1), "float32")).shape == (1, 64, 128)
            assert capsules(np.zeros((1, 56, 28, 1), "float32")).shape == (1, 176, 128)
        for shape in ((2, 28, 28, 1), (2, 56, 28, 1)):
            scores = np_(model(np.random.default_rng(0).random(shape).astype("float32")))
            assert scores.shape == (2, 10) and np.all((scores >= 0) & (scores < 1))


@pytest.mark.data
@pytest.mark.backends
def test_smoke_run_records_resumes_and_refuses_other_settings(require_data, tmp_path, capsys):
    require_data("mnist/mnist.npz")
    from capsule import train

    records = check_smoke_run(train, [], tmp_path, capsys, ["cnn-smoke", "article-smoke"])
    for record in records:
        metrics = record["metrics"]
        assert 0 <= metrics["test_acc"] <= 1 and 0 <= metrics["pair_acc_confident"] <= metrics["pair_acc"] <= 1
        assert record["config"]["pairs"] == 200 and record["config"]["width"] == 16 and len(metrics["examples"]) == 8
    assert (tmp_path / "records" / "capsule" / "two_digits-smoke.png").is_file()
    with pytest.raises(SystemExit, match="another setup"):
        train.main(
            [
                "--smoke",
                "--out",
                str(tmp_path / "records"),
                "--precision",
                "mixed_bfloat16" if records[0]["config"]["precision"] == "float32" else "float32",
            ]
        )


def test_em_model_layout_size_and_weights_on_another_image_size():
    """The EM models: the paper's layout (12x12 after the 5x5/2 convolution, 5x5 after ConvCaps 3x3/2,
    3x3 after ConvCaps 3x3/1), their parameter counts by hand, and the 56x28 two-digit model: the same
    weights in a model of that size, whose scores on a 28x28 image equal the trained model's."""
    from capsule import train

    for name in ("em", "em_paper"):
        sizes = train.MODELS[name]["em"]
        a, b, c, d = sizes["A"], sizes["B"], sizes["C"], sizes["D"]
        expected = (25 * a + a) + (a * b * 16 + b * 16) + (a * b + b) + (9 * b * c * 16 + 2 * c)
        expected += 9 * c * d * 16 + 2 * d + d * 10 * 16 + 2 * 10
        model = train.build_em_model(sizes)
        assert model.count_params() == expected, name
        grids = [model.get_layer(n).output[1].shape[1:3] for n in ("primary", "conv_caps1", "conv_caps2")]
        assert grids == [(12, 12), (5, 5), (3, 3)], name
    model = train.build_em_model(train.MODELS["em"]["em"])
    images = np.random.default_rng(0).random((3, 28, 28, 1)).astype("float32")
    same = train.em_scores(model, train.MODELS["em"]["em"], images)
    # predict's compiled graph and the eager call sum in other orders, which the routing amplifies to
    # about 3e-5; a weight in the wrong place would move the scores by tenths
    np.testing.assert_allclose(same, np_(model(images)), rtol=1e-3, atol=2e-4)
    pairs = np.concatenate([images, images[::-1]], axis=1)  # 56x28
    scores = train.em_scores(model, train.MODELS["em"]["em"], pairs)
    assert scores.shape == (3, 10) and np.all((scores > 0) & (scores < 1))
    other = train.build_em_model(train.MODELS["em"]["em"], 56, 28)
    assert other.get_layer("class_caps").input[1].shape[1:3] == (10, 3)  # 26x12 -> 12x5 -> 10x3


@pytest.mark.data
@pytest.mark.backends
def test_em_smoke_run_records_finite_losses_and_two_digit_scores(require_data, tmp_path, capsys):
    require_data("mnist/mnist.npz")
    from capsule import train

    (record,) = check_smoke_run(train, ["--models", "em"], tmp_path, capsys, ["em-smoke"])
    metrics, history = record["metrics"], record["history"]
    assert record["config"]["em"] == train.MODELS["em"]["em"] and record["config"]["loss"].startswith("spread")
    assert 0 <= metrics["test_acc"] <= 1 and 0 <= metrics["pair_acc_confident"] <= metrics["pair_acc"] <= 1
    assert all(np.isfinite(history["loss"])) and all(np.isfinite(history["val_loss"]))


def test_em_on_smallnorb_from_a_folder_of_synthetic_files(tmp_path, capsys, monkeypatch):
    """``--smallnorb DIR``: the EM model trains on smallNORB read from the six files (here written by
    code in the dataset's format, 40 pairs a split), cropped 48 -> 32, 5 classes; other models are
    refused; a missing folder is named."""
    from functools import partial

    from conftest import _norb_name, _write_norb

    from capsule import train
    from utils import data

    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "test"):
        arrays[split, "dat"] = rng.integers(0, 256, (40, 2, 96, 96), dtype=np.uint8)
        arrays[split, "cat"] = rng.integers(0, 5, 40).astype(np.int32)
    _write_norb(tmp_path / "norb", arrays, gzipped=(("train", "dat"),))
    monkeypatch.setattr(data, "small_norb", partial(data.small_norb, expected_count=40))
    (train_set, _), (test_set, y_test) = train.load_norb(tmp_path / "norb")
    assert train_set.shape == (40, 48, 48, 1) and test_set.shape == (40, 48, 48, 1) and y_test.shape == (40, 5)
    np.testing.assert_allclose(test_set.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    out = tmp_path / "records"
    (record,) = train.main(["--smoke", "--smallnorb", str(tmp_path / "norb"), "--out", str(out)])
    assert record["experiment"] == "em-smallnorb-smoke" and record["config"]["dataset"] == "smallnorb"
    assert 0 <= record["metrics"]["test_acc"] <= 1 and "pair_acc" not in record["metrics"]
    assert "smallNORB test acc" in capsys.readouterr().out
    model = train.build_em_model(train.MODELS["em"]["em"], 48, 48, classes=5, crop=32)
    assert model.output.shape == (None, 5) and model.get_layer("conv").input.shape[1:3] == (32, 32)
    crop = model.get_layer("crop")
    image = np.arange(48 * 48, dtype="float32").reshape(1, 48, 48, 1)
    np.testing.assert_array_equal(np_(crop(image)), image[:, 8:40, 8:40])  # the centre at test time
    trained = np_(crop(image, training=True))[0, :, :, 0]  # a random window in training
    top, left = divmod(int(trained[0, 0]), 48)
    np.testing.assert_array_equal(trained, image[0, top : top + 32, left : left + 32, 0])
    with pytest.raises(SystemExit):
        train.main(["--smoke", "--smallnorb", str(tmp_path / "norb"), "--models", "cnn", "--out", str(out)])
    assert "EM models only" in capsys.readouterr().err
    with pytest.raises(data.DatasetNotFoundError, match=_norb_name("train", "dat")):
        train.load_norb(tmp_path / "nowhere")


def test_claim_holds_on_the_reference_and_fails_when_reversed():
    from capsule import train
    from utils import report, runs

    reference = runs.load_results(runs.REFERENCE, "capsule")
    assert train.CLAIM.verdict(reference, "full") == report.REPRODUCED
    swap = {"cnn": "article", "article": "cnn"}
    swapped = [{**r, "experiment": swap.get(r["experiment"], r["experiment"])} for r in reference]
    assert train.CLAIM.verdict(swapped, "full") == report.NOT_REPRODUCED


def test_precision_auto_takes_bfloat16_only_where_the_hardware_has_it(monkeypatch, tmp_path):
    from capsule import train

    monkeypatch.setattr(train.runs, "devices", lambda: [])
    real_open = open
    for flags, expected in (
        ("fpu avx2 fma", "float32"),
        ("avx2 avx512f avx512_bf16", "mixed_bfloat16"),
        ("avx2 amx_bf16 amx_tile", "mixed_bfloat16"),
    ):
        (tmp_path / "cpuinfo").write_text(f"flags\t\t: {flags}\n")
        monkeypatch.setattr(
            "builtins.open",
            lambda path, *a, **k: (
                real_open(tmp_path / "cpuinfo", *a, **k) if path == "/proc/cpuinfo" else real_open(path, *a, **k)
            ),
        )
        assert train.auto_precision() == expected, flags
    monkeypatch.setattr(train.runs, "devices", lambda: ["GPU:0"])
    assert train.auto_precision() == "mixed_bfloat16"
