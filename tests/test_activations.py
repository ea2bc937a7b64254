"""activations/: the layers against closed forms, their gradients, saving, and the experiment's pieces."""

import ast
import textwrap

import numpy as np
import pytest
from conftest import BACKEND, REPO, check_smoke_run, grad, run_copied_alone

pytest.importorskip(BACKEND, reason=f"KERAS_BACKEND={BACKEND} but {BACKEND} is not installed")
import keras  # noqa: E402

from activations.layers import Swish, XMinExp, rounding_nonlinearity, swish, x_min_exp  # noqa: E402

X = np.linspace(-8, 8, 321)
BIG = np.concatenate([np.linspace(-1e4, 1e4, 2001), [-1e4, -88.8, -30, -1e-7, 0.0, 1e-7, 30, 88.8, 1e4]])
sigmoid = lambda x: 0.5 * (1 + np.tanh(np.asarray(x) / 2))  # overflow-free
np_ = keras.ops.convert_to_numpy


@pytest.mark.layers
def test_x_min_exp_matches_the_articles_two_forms():
    expected = X * np.minimum(1.0, np.exp(X))  # the definition
    article = np.maximum(X, X * np.exp(-np.abs(X)))  # the article's overflow-safe form
    np.testing.assert_allclose(article, expected, rtol=1e-12)
    np.testing.assert_allclose(
        np_(x_min_exp(keras.ops.convert_to_tensor(X, "float32"))), expected, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(np_(XMinExp()(X.astype("float32"))), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.layers
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 3.0])
def test_swish_matches_closed_form(beta):
    expected = X * sigmoid(beta * X)
    np.testing.assert_allclose(np_(Swish(beta)(X.astype("float32"))), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np_(swish(keras.ops.convert_to_tensor(X, "float32"), beta)), expected, rtol=1e-5, atol=1e-6
    )


@pytest.mark.layers
def test_swish_limits_are_half_identity_and_relu():
    np.testing.assert_allclose(np_(Swish(0.0)(X.astype("float32"))), X / 2, rtol=1e-6)
    np.testing.assert_allclose(np_(Swish(200.0)(X.astype("float32"))), np.maximum(X, 0), atol=1e-3)


@pytest.mark.layers
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", ["x_min_exp", "swish", "swish_beta2", "trainable_swish"])
def test_gradients_finite_and_exact_on_large_inputs(name, dtype):
    """Autodiff gradients on [-1e4, 1e4] are finite and equal the closed-form derivative."""
    x = BIG.astype(dtype)
    layer = {
        "x_min_exp": XMinExp(dtype=dtype),
        "swish": Swish(dtype=dtype),
        "swish_beta2": Swish(2.0, dtype=dtype),
        "trainable_swish": Swish(2.0, trainable_beta=True, dtype=dtype),
    }[name]
    layer.build(x.shape)
    y = np_(layer(x))
    g = grad(layer, x)
    assert y.dtype == np.dtype(dtype) and g.dtype == np.dtype(dtype)
    assert np.all(np.isfinite(y)), f"{name} {dtype}: non-finite output"
    assert np.all(np.isfinite(g)), f"{name} {dtype}: non-finite gradient at {x[~np.isfinite(g)][:5]}"
    x64 = x.astype("float64")
    if name == "x_min_exp":
        expected = np.exp(np.minimum(x64, 0)) * (1 + x64 * (x64 < 0))
    else:
        beta = 1.0 if name == "swish" else 2.0
        s = sigmoid(beta * x64)
        expected = s + beta * x64 * s * (1 - s)
    tol = 1e-5 if dtype == "float32" else 5e-3
    np.testing.assert_allclose(g.astype("float64"), expected, rtol=tol, atol=tol)


@pytest.mark.layers
def test_trainable_beta_gets_a_gradient_and_learns():
    """beta is a real weight: one fit step moves it, and a fixed beta creates no weight."""
    fixed = Swish(1.0)
    fixed.build((None, 4))
    assert fixed.weights == []
    layer = Swish(1.0, trainable_beta=True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), layer, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = float(np_(layer.beta))
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    model.fit(x, x.sum(axis=1, keepdims=True) ** 2, epochs=1, batch_size=32, verbose=0)
    assert len(layer.trainable_weights) == 1
    assert float(np_(layer.beta)) != before


@pytest.mark.layers
def test_keras_save_load_round_trip_is_exact(tmp_path):
    """Layers, the plain functions used as `activation=`, and a trained beta survive `.keras`."""
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation=x_min_exp)(inputs)
    x = keras.layers.Dense(8, activation=swish)(x)
    x = Swish(0.7, trainable_beta=True, name="swish_learned")(x)
    x = XMinExp()(x)
    x = Swish(1.5)(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    model.get_layer("swish_learned").beta.assign(1.9)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    data = np.random.default_rng(1).normal(size=(5, 6)).astype("float32") * 5
    np.testing.assert_array_equal(np_(loaded(data)), np_(model(data)))
    assert float(np_(loaded.get_layer("swish_learned").beta)) == pytest.approx(1.9)
    assert loaded.get_layer("swish_learned").get_config()["trainable_beta"] is True


@pytest.mark.layers
@pytest.mark.filterwarnings("ignore:Layer 'lambda")  # the probe consumes the mask on purpose
@pytest.mark.parametrize(
    "layer", [Swish(), Swish(trainable_beta=True), XMinExp()], ids=["swish", "swish_beta", "xminexp"]
)
def test_layers_pass_the_keras_mask_through(layer):
    """After Embedding(mask_zero=True) the padding mask reaches the next layer unchanged."""
    tokens = keras.Input((4,), dtype="int32")
    x = keras.layers.Embedding(10, 3, mask_zero=True)(tokens)
    x = layer(x)
    mask_probe = keras.layers.Lambda(
        lambda t, mask=None: keras.ops.cast(mask, "float32"), output_shape=(4,)
    )  # echoes its mask
    model = keras.Model(tokens, mask_probe(x))
    np.testing.assert_array_equal(np_(model(np.array([[1, 2, 0, 0], [3, 0, 0, 0]]))), [[1, 1, 0, 0], [1, 0, 0, 0]])
    assert tuple(layer.compute_output_shape((None, 4, 3))) == (None, 4, 3)


@pytest.mark.layers
def test_integer_inputs_become_floats():
    ints = np.array([[-2, 0, 3]])
    assert keras.backend.is_float_dtype(keras.ops.convert_to_tensor(x_min_exp(ints)).dtype)
    np.testing.assert_allclose(np_(XMinExp()(ints)), [[-2 * np.exp(-2), 0, 3]], rtol=1e-6)
    np.testing.assert_allclose(np_(Swish()(ints)), ints * sigmoid(ints), rtol=1e-6)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="jit_compile=True is the TensorFlow/XLA check")
def test_fit_with_xla_jit_compile():
    """GPU users get XLA by default on TensorFlow; the layers must compile under it."""
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(8),
            Swish(1.0, trainable_beta=True),
            keras.layers.Dense(8),
            XMinExp(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="adam", loss="mse", jit_compile=True)
    x = np.random.default_rng(0).normal(size=(64, 5)).astype("float32")
    history = model.fit(x, x[:, :1], epochs=3, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.layers
def test_rounding_nonlinearity_is_linear_in_float64_only():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-1, 1, (2, 5000))
    c = 3.0
    f64 = lambda v: rounding_nonlinearity(v, "float64")
    f32 = lambda v: rounding_nonlinearity(v, "float32")
    # float64: exactly the identity, so additive and homogeneous.
    np.testing.assert_array_equal(f64(a), a)
    assert np.max(np.abs(f64(a + b) - f64(a) - f64(b))) < 1e-15
    assert np.max(np.abs(f64(c * a) - c * f64(a))) < 1e-15
    # float32: the staircase round(512 x) / 512, far from additive.
    a32, b32 = a.astype("float32"), b.astype("float32")
    np.testing.assert_array_equal(f32(a32), np.round(a32 * 512) / 512)
    assert np.max(np.abs(f32(a32 + b32) - f32(a32) - f32(b32))) >= 1.9e-3
    assert np.max(np.abs(f32(c * a32) - c * f32(a32))) >= 1e-3
    assert f32(0.001) == np.float32(2**-9) and f32(0.0009) == np.float32(0)
    with pytest.raises(ValueError, match="float32 or float64"):
        rounding_nonlinearity(1.0, "float16")


def test_layers_file_is_copyable_alone(tmp_path):
    """activations/layers.py imports only keras and numpy, and works from an empty folder."""
    script = textwrap.dedent("""
        import numpy as np, keras, layers
        x = np.array([-2.0, 0.0, 2.0], "float32")
        m = keras.Sequential([keras.Input((3,)), layers.Swish(trainable_beta=True), layers.XMinExp()])
        m.save("m.keras")
        out = keras.saving.load_model("m.keras")(x[None])
        print(keras.ops.convert_to_numpy(out).tolist())
    """)
    got = ast.literal_eval(run_copied_alone(REPO / "activations" / "layers.py", script, tmp_path))
    s = -2 * sigmoid(-2.0)  # swish(-2), then x * e^x since it is negative
    np.testing.assert_allclose(got, [[s * np.exp(s), 0.0, 2 * sigmoid(2.0)]], rtol=1e-6)


# ---- the experiment's pieces (activations/train.py) --------------------------------------------


def test_flat_fraction_is_half_for_relu_and_zero_for_swish():
    from activations import train

    x = np.random.default_rng(0).normal(size=(256, 784)).astype("float32")
    keras.utils.set_random_seed(0)
    relu = train.flat_fraction(train.deep_mlp("relu"), x)
    swish_ = train.flat_fraction(train.deep_mlp("swish"), x)
    assert 0.4 < relu < 0.6, relu  # the article's "half the units are in the flat region"
    assert swish_ < 0.02, swish_


@pytest.mark.data
@pytest.mark.backends
def test_smoke_run_records_resumes_and_refuses_other_settings(tmp_path, require_data, capsys):
    """The script end to end on the current backend (a smoke run: 512 images, 1 epoch), then a
    rerun that reuses every record, and a rerun with other settings that is refused by name."""
    from activations import train

    require_data("mnist/mnist.npz")
    experiments = [f"{m}-{a}-smoke" for m in ("mlp", "cnn") for a in ("relu", "tanh", "sigmoid", "swish", "x_min_exp")]
    records = check_smoke_run(train, [], tmp_path, capsys, experiments)
    record = next(r for r in records if r["experiment"] == "mlp-relu-smoke")
    assert record["config"]["epochs"] == 1 and record["config"]["train_size"] == 512
    assert record["protocol"] == "smoke: 1 epochs on 512 training images"
    assert 0.4 < record["metrics"]["flat_fraction_init"] < 0.6 and len(record["history"]["val_accuracy"]) == 1
    with pytest.raises(SystemExit, match=r"another setup \(was, now: \{'epochs': \(1, 2\)\}\)"):
        train.main(["--smoke", "--epochs", "2", "--out", str(tmp_path / "records")])


def test_claim_holds_on_the_reference_and_fails_when_reversed():
    """The committed reference supports the article's claim as the criterion states it; the same
    numbers with sigmoid and ReLU swapped do not (the criterion can fail)."""
    from activations import train
    from utils import report, runs

    reference = runs.load_results(runs.REFERENCE, "activations")
    assert train.CLAIM.verdict(reference, "full") == report.REPRODUCED
    swapped = [
        {
            **r,
            "experiment": {"mlp-relu": "mlp-sigmoid", "mlp-sigmoid": "mlp-relu"}.get(r["experiment"], r["experiment"]),
        }
        for r in reference
    ]
    assert train.CLAIM.verdict(swapped, "full") == report.NOT_REPRODUCED
    assert train.CLAIM.verdict([r for r in reference if r["experiment"] != "mlp-sigmoid"], "full") == report.INCOMPLETE
