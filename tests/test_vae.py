"""vae/: the KL against Monte Carlo, the Bernoulli likelihood against NumPy, the sampling's statistics and
seeds, add_loss training on every backend, the importance-weighted bound against numerical
integration, saving, XLA, bad inputs, and the experiment's pieces."""

import math
from statistics import NormalDist

import numpy as np
import pytest
from conftest import BACKEND, REPO, check_smoke_run, grad, run_copied_alone

pytest.importorskip(BACKEND, reason=f"KERAS_BACKEND={BACKEND} but {BACKEND} is not installed")
import keras  # noqa: E402

from vae.layers import (  # noqa: E402
    KLDivergence,
    Sampling,
    bernoulli_nll,
    check_images,
    gaussian_kl,
    gaussian_log_density,
    iw_log_likelihood,
    log_importance_weights,
)

np_ = keras.ops.convert_to_numpy


def np_kl(mean, log_var, prior_mean=0.0):
    return 0.5 * np.sum((mean - prior_mean) ** 2 + np.exp(log_var) - log_var - 1.0, axis=-1)


def np_bernoulli_nll(x, p):
    p = np.clip(np.asarray(p, "float64"), 1e-7, float(np.float32(1 - 1e-7)))  # 1 - 1e-7 as float32 holds it
    return -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=tuple(range(1, np.ndim(x))))


def tiny_vae(dim=6, latent=2, hidden=16, seed=0, conditional=False):
    """A small MLP VAE built from the layers as the README shows."""
    x = keras.Input((dim,))
    h = keras.layers.Dense(hidden, activation="tanh")(x)
    z_mean, z_log_var = keras.layers.Dense(latent)(h), keras.layers.Dense(latent)(h)
    encoder = keras.Model(x, [z_mean, z_log_var])
    decoder = keras.Sequential(
        [keras.Input((latent,)), keras.layers.Dense(hidden, activation="tanh"), keras.layers.Dense(dim, "sigmoid")]
    )
    inputs = [x]
    if conditional:
        y = keras.Input((3,))
        z_mean, z_log_var, _ = KLDivergence()([z_mean, z_log_var, keras.layers.Dense(latent)(y)])
        inputs.append(y)
    else:
        z_mean, z_log_var = KLDivergence()([z_mean, z_log_var])
    z = Sampling(seed=seed)([z_mean, z_log_var])
    return keras.Model(inputs if conditional else x, decoder(z)), encoder, decoder


def synthetic_patterns(n=600, dim=6, seed=0):
    """Binary images made of two prototypes plus flipped pixels: something a 2-d latent can model."""
    rng = np.random.default_rng(seed)
    protos = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1]], "float32")[:, :dim]
    x = protos[rng.integers(0, 2, n)]
    flip = rng.random(x.shape) < 0.05
    return np.where(flip, 1 - x, x).astype("float32")


# --------------------------------------------------------------------------------------------------
# The KL term


@pytest.mark.layers
def test_closed_form_kl_equals_its_monte_carlo_estimate_and_a_wrong_formula_does_not():
    rng = np.random.default_rng(0)
    mean, log_var = rng.normal(size=3), rng.normal(scale=0.7, size=3)
    closed = float(np_(gaussian_kl(mean.astype("float32"), log_var.astype("float32"))))
    assert closed == pytest.approx(np_kl(mean, log_var), rel=1e-5)
    # KL = E_q[log q(z) - log p(z)], estimated from 400k draws of q, with its standard error
    z = mean + np.exp(log_var / 2) * rng.normal(size=(400_000, 3))
    log_q = -0.5 * np.sum((z - mean) ** 2 / np.exp(log_var) + log_var + np.log(2 * np.pi), axis=1)
    log_p = -0.5 * np.sum(z**2 + np.log(2 * np.pi), axis=1)
    terms = log_q - log_p
    estimate, se = terms.mean(), terms.std() / np.sqrt(len(terms))
    assert abs(closed - estimate) < 4 * se
    wrong = 0.5 * np.sum(mean**2 + np.exp(log_var) - log_var)  # the "- 1" forgotten: the control
    assert abs(wrong - estimate) > 4 * se


@pytest.mark.layers
def test_class_mean_kl_reduces_to_the_standard_one_and_shifts_with_the_mean():
    rng = np.random.default_rng(1)
    mean, log_var, prior = (rng.normal(size=(5, 2)).astype("float32") for _ in range(3))
    standard = np_(gaussian_kl(mean, log_var))
    assert np.allclose(np_(gaussian_kl(mean, log_var, np.zeros_like(prior))), standard, atol=1e-6)
    assert np.allclose(np_(gaussian_kl(mean, log_var, prior)), np_kl(mean, log_var, prior), rtol=1e-5)
    assert np.allclose(np_(gaussian_kl(mean - prior, log_var)), np_(gaussian_kl(mean, log_var, prior)), atol=1e-5)
    assert not np.allclose(np_(gaussian_kl(mean, log_var, prior)), standard)  # the prior mean matters


@pytest.mark.layers
def test_kl_layer_adds_the_batch_mean_kl_and_passes_its_inputs_through():
    rng = np.random.default_rng(2)
    mean, log_var, prior = (rng.normal(size=(4, 3)).astype("float32") for _ in range(3))
    for weight in (1.0, 0.25, np.float32(0.5)):
        layer = KLDivergence(weight=weight)
        out = layer([mean, log_var, prior])
        assert all(np.array_equal(np_(a), b) for a, b in zip(out, [mean, log_var, prior]))
        assert len(layer.losses) == 1
        assert float(np_(layer.losses[0])) == pytest.approx(weight * np_kl(mean, log_var, prior).mean(), rel=1e-5)


# --------------------------------------------------------------------------------------------------
# The reconstruction term


@pytest.mark.layers
def test_bernoulli_nll_matches_numpy_including_clipped_extremes_and_grey_pixels():
    rng = np.random.default_rng(3)
    x = rng.random((4, 3, 5)).astype("float32")
    x[0] = np.round(x[0])
    p = rng.random((4, 3, 5)).astype("float32")
    p[1, 0, :3] = [0.0, 1.0, 0.5]
    got = np_(bernoulli_nll(x, p))
    assert got.shape == (4,) and np.all(np.isfinite(got))
    assert np.allclose(got, np_bernoulli_nll(x, p), rtol=1e-5)
    # Keras's binary cross-entropy averages over the last axis; the article multiplies it by 784
    flat_x, flat_p = x.reshape(4, -1), p.reshape(4, -1)
    keras_bce = np_(keras.losses.binary_crossentropy(flat_x, flat_p)) * flat_x.shape[1]
    assert np.allclose(np_(bernoulli_nll(flat_x, flat_p)), keras_bce, rtol=1e-4)


@pytest.mark.layers
def test_pixels_outside_zero_one_give_nan_not_a_wrong_loss_and_check_images_names_them():
    x = np.full((3, 4), 0.5, "float32")
    x[1, 2] = 255.0  # an image not divided by 255
    loss = np_(bernoulli_nll(x, np.full((3, 4), 0.5, "float32")))
    assert np.isfinite(loss[[0, 2]]).all() and np.isnan(loss[1])
    message = r"value 255.0 at index \(1, 2\) is outside \[0, 1\].*divide 8-bit images by 255"
    with pytest.raises(ValueError, match=message):
        check_images(x)
    with pytest.raises(ValueError, match="outside"):
        check_images(np.array([[0.1, np.nan]]))
    assert check_images(np.zeros((2, 2))) is not None


@pytest.mark.layers
def test_bernoulli_nll_refuses_images_and_outputs_of_different_shapes():
    with pytest.raises(ValueError, match=r"images have shape \(2, 784\) but the decoder gives \(2, 28, 28\)"):
        bernoulli_nll(np.zeros((2, 784), "float32"), np.full((2, 28, 28), 0.5, "float32"))
    x = keras.Input((784,))
    model = keras.Model(x, keras.layers.Reshape((28, 28))(keras.layers.Dense(784, activation="sigmoid")(x)))
    model.compile("rmsprop", loss=bernoulli_nll)
    with pytest.raises(ValueError, match="they must match"):
        model.fit(np.zeros((4, 784), "float32"), np.zeros((4, 784), "float32"), verbose=0)


# --------------------------------------------------------------------------------------------------
# Sampling


@pytest.mark.layers
def test_sampling_draws_have_the_posteriors_mean_and_variance():
    mean = np.tile(np.array([[1.5, -2.0]], "float32"), (200_000, 1))
    log_var = np.tile(np.array([[0.0, np.log(0.25)]], "float32"), (200_000, 1))
    z = np_(Sampling(seed=3)([mean, log_var])).astype("float64")
    se = np.array([1.0, 0.5]) / np.sqrt(len(z))
    assert np.all(np.abs(z.mean(0) - [1.5, -2.0]) < 4 * se)
    assert np.allclose(z.var(0), [1.0, 0.25], rtol=0.02)
    assert abs(np.corrcoef(z.T)[0, 1]) < 0.02  # independent coordinates


@pytest.mark.layers
def test_seeds_make_draws_repeat_and_different_seeds_differ():
    mean, log_var = np.zeros((8, 2), "float32"), np.zeros((8, 2), "float32")
    a, b, c = Sampling(seed=7), Sampling(seed=7), Sampling(seed=8)
    first = np_(a([mean, log_var]))
    assert np.array_equal(first, np_(b([mean, log_var])))
    assert not np.array_equal(first, np_(c([mean, log_var])))
    assert not np.array_equal(first, np_(a([mean, log_var])))  # the generator moves on


@pytest.mark.layers
def test_gradients_flow_through_the_sampling_to_mean_and_log_variance():
    rng = np.random.default_rng(4)
    mean, log_var = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    eps = (np_(Sampling(seed=5)([np.zeros((3, 2)), np.zeros((3, 2))]))).astype("float64")
    d_mean = grad(lambda m: Sampling(seed=5)([m, keras.ops.convert_to_tensor(log_var)]), mean)
    d_log_var = grad(lambda v: Sampling(seed=5)([keras.ops.convert_to_tensor(mean), v]), log_var)
    assert np.allclose(d_mean, 1.0)
    assert np.allclose(d_log_var, 0.5 * np.exp(log_var / 2) * eps, rtol=1e-5, atol=1e-7)
    assert np.abs(d_log_var).min() > 0


# --------------------------------------------------------------------------------------------------
# Training with compile() / fit()


@pytest.mark.layers
def test_fit_and_evaluate_report_reconstruction_plus_kl():
    """The logged loss is the batch mean of bernoulli_nll + KL: with a near-zero posterior variance
    the sample is the mean, and the loss can be computed by hand."""
    vae, encoder, decoder = tiny_vae()
    x = synthetic_patterns(200)
    vae.compile("rmsprop", loss=bernoulli_nll)
    for layer in encoder.layers[-1:]:  # z_log_var's Dense: zero weights, bias -30 (sigma ~ 3e-7)
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()[:1]] + [np.full((2,), -30.0, "float32")])
    z_mean, z_log_var = (np_(t) for t in encoder(x))
    expected = np_bernoulli_nll(x, np_(decoder(z_mean))).mean() + np_kl(z_mean, z_log_var).mean()
    assert vae.evaluate(x, x, batch_size=200, verbose=0) == pytest.approx(expected, rel=1e-4)


@pytest.mark.layers
@pytest.mark.parametrize("conditional", [False, True])
def test_the_elbo_improves_on_a_tiny_synthetic_set(conditional):
    keras.utils.set_random_seed(0)
    vae, _, _ = tiny_vae(conditional=conditional)
    x = synthetic_patterns(600)
    y = np.eye(3, dtype="float32")[np.arange(600) % 3]
    inputs = [x, y] if conditional else x
    vae.compile(keras.optimizers.RMSprop(0.01), loss=bernoulli_nll)
    before = vae.evaluate(inputs, x, batch_size=600, verbose=0)
    history = vae.fit(inputs, x, batch_size=50, epochs=8, verbose=0).history["loss"]
    after = vae.evaluate(inputs, x, batch_size=600, verbose=0)
    assert np.all(np.isfinite(history)) and after < 0.6 * before, (before, after)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the TensorFlow/XLA check (JAX compiles anyway)")
def test_trains_under_xla_jit_compile():
    keras.utils.set_random_seed(0)
    vae, encoder, _ = tiny_vae(conditional=True)
    x = synthetic_patterns(300)
    y = np.eye(3, dtype="float32")[np.arange(300) % 3]
    vae.compile(keras.optimizers.RMSprop(0.01), loss=bernoulli_nll, jit_compile=True, steps_per_execution=3)
    history = vae.fit([x, y], x, batch_size=50, epochs=4, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0]
    assert np.all(np.isfinite(np_(encoder(x)[0])))


# --------------------------------------------------------------------------------------------------
# The importance-weighted bound


@pytest.mark.layers
def test_importance_weighted_bound_is_above_the_elbo_and_tightens_with_k():
    keras.utils.set_random_seed(1)
    vae, encoder, decoder = tiny_vae()
    x = synthetic_patterns(400, seed=1)
    vae.compile(keras.optimizers.RMSprop(0.01), loss=bernoulli_nll)
    vae.fit(x, x, batch_size=50, epochs=3, verbose=0)
    z_mean, z_log_var = encoder(x)
    bounds = {}
    for k in (1, 10, 200):
        log_w = log_importance_weights(decoder, x, z_mean, z_log_var, k, seed=k)
        iw = iw_log_likelihood(log_w)
        elbo = np.mean(np_(log_w).astype("float64"), axis=1)
        assert np.all(iw >= elbo - 1e-9)  # Jensen (log of a mean >= mean of logs): checks the reduction
        bounds[k] = iw.mean()
    assert np.allclose(iw_log_likelihood(np.zeros((2, 5))), 0.0)
    assert bounds[1] < bounds[10] < bounds[200], bounds


@pytest.mark.layers
def test_importance_weighted_bound_converges_to_log_p_by_numerical_integration():
    """One latent dimension: log p(x) = log integral p(x|z) N(z; 0, 1) dz by quadrature, the oracle."""
    decoder = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(4, activation="sigmoid")]
    )
    decoder.set_weights(
        [
            np.array([[2.0, -1.5, 0.7]], "float32"),
            np.array([0.5, 0.0, -0.3], "float32"),
            np.array([[3, -2, 0, 1], [1, 2, -3, 0], [0, 1, 2, -2]], "float32"),
            np.array([0.0, 0.2, -0.1, 0.3], "float32"),
        ]
    )
    x = np.array([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 0, 1]], "float32")
    grid = np.linspace(-9, 9, 9001, dtype="float64")[:, None]
    p = np_(decoder(grid.astype("float32"))).astype("float64")
    log_px_z = x @ np.log(p).T + (1 - x) @ np.log(1 - p).T  # (3, 9001)
    log_prior = -0.5 * (grid[:, 0] ** 2 + np.log(2 * np.pi))
    exact = np.log(np.exp(log_px_z + log_prior).sum(1) * (grid[1, 0] - grid[0, 0]))
    # a proposal q = N(0.3, 0.8^2), deliberately not the posterior
    k = 20_000
    z_mean, z_log_var = np.full((3, 1), 0.3, "float32"), np.full((3, 1), np.log(0.64), "float32")
    log_w = np_(log_importance_weights(decoder, x, z_mean, z_log_var, k, seed=0)).astype("float64")
    iw = iw_log_likelihood(log_w)
    w = np.exp(log_w - log_w.max(1, keepdims=True))
    se = w.std(1) / w.mean(1) / np.sqrt(k)  # the standard error of log(mean w), by the delta method
    assert np.all(np.abs(iw - exact) < 4 * se + 1e-4), (iw, exact, se)
    assert np.all(log_w.mean(1) < exact - 20 * se)  # the ELBO is a strict lower bound for this proposal


@pytest.mark.layers
def test_gaussian_log_density_matches_normaldist():
    z, mean, log_var = np.array([[0.3, -1.2]]), np.array([[0.0, 0.5]]), np.array([[0.0, np.log(4.0)]])
    expected = math.log(NormalDist(0, 1).pdf(0.3)) + math.log(NormalDist(0.5, 2).pdf(-1.2))
    assert float(np_(gaussian_log_density(z, mean, log_var))[0]) == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------------------------------
# Saving, bad arguments, copying


@pytest.mark.layers
def test_keras_round_trip_of_the_vae_its_encoder_and_decoder(tmp_path):
    vae, encoder, decoder = tiny_vae(conditional=True, seed=11)
    x = synthetic_patterns(8)
    y = np.eye(3, dtype="float32")[np.arange(8) % 3]
    for name, model, inputs in (("encoder", encoder, x), ("decoder", decoder, np.ones((8, 2), "float32"))):
        model.save(tmp_path / f"{name}.keras")
        loaded = keras.saving.load_model(tmp_path / f"{name}.keras")
        for a, b in zip(keras.tree.flatten(model(inputs)), keras.tree.flatten(loaded(inputs))):
            assert np.allclose(np_(a), np_(b), atol=1e-6)
    vae.compile("rmsprop", loss=bernoulli_nll)
    vae.fit([x, y], x, epochs=1, verbose=0)  # a trained optimizer is saved and restored too
    vae.save(tmp_path / "vae.keras")
    loaded = keras.saving.load_model(tmp_path / "vae.keras")
    assert np.allclose(np_(vae([x, y])), np_(loaded([x, y])), atol=1e-6)  # the seed generator's state too
    sampling = [layer for layer in loaded.layers if isinstance(layer, Sampling)][0]
    kl = [layer for layer in loaded.layers if isinstance(layer, KLDivergence)][0]
    assert sampling.seed == 11 and kl.weight == 1.0 and loaded.loss is bernoulli_nll
    assert np.isfinite(loaded.evaluate([x, y], x, verbose=0))


@pytest.mark.layers
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: KLDivergence(weight=-1.0), "weight must be a finite float >= 0, got -1.0"),
        (lambda: KLDivergence(weight=float("nan")), "weight must be a finite float >= 0"),
        (lambda: Sampling(seed=1.5), "seed must be an int or None, got 1.5"),
        (
            lambda: Sampling()([np.zeros((2, 2)), np.zeros((2, 3))]),
            r"z_mean has shape \(2, 2\) but z_log_var has shape \(2, 3\)",
        ),
        (lambda: Sampling()(np.zeros((2, 2))), r"Sampling: expects a list \[z_mean, z_log_var\], got one tensor"),
        (
            lambda: KLDivergence()(np.zeros((2, 2))),
            r"expects a list \[z_mean, z_log_var\] or \[z_mean, z_log_var, prior_mean\], got one tensor",
        ),
        (
            lambda: KLDivergence()([np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 5))]),
            r"prior_mean has shape \(2, 5\) but z_mean has shape \(2, 2\)",
        ),
        (lambda: log_importance_weights(None, None, None, None, 0), "k must be an int >= 1, got 0"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.layers
def test_the_readme_snippet_runs_as_pasted_with_layers_py_alone(tmp_path):
    """The "Use the layers" code of vae/README.md, run in an empty folder beside a copy of layers.py
    alone (which must import only keras and numpy)."""
    readme = (REPO / "vae" / "README.md").read_text(encoding="utf-8")
    snippet = readme.split("## Use the layers", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    last = run_copied_alone(REPO / "vae" / "layers.py", snippet, tmp_path)
    nll, elbo = (float(part.split("~ ")[1].split()[0].rstrip(",")) for part in last.split(", "))
    assert 0 < nll <= elbo + 1.0, last  # the bound is the tighter one (up to the draws' noise)


# --------------------------------------------------------------------------------------------------
# The experiment's pieces


def test_grid_uses_the_articles_quantiles_and_orientation():
    from vae import train

    decoder = keras.Sequential([keras.Input((2,)), keras.layers.Dense(784)])
    decoder.layers[0].set_weights([np.eye(2, 784, dtype="float32"), np.zeros(784, "float32")])
    grid = train.decode_grid(decoder, center=(1.0, -2.0))
    q = [NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, 15)]
    assert q[0] == pytest.approx(-1.6448536, abs=1e-6)  # scipy's norm.ppf(0.05)
    assert np.allclose(grid[:, :, 0, 0], np.array(q)[None, :] + 1.0, atol=1e-5)  # columns: the first coordinate
    assert np.allclose(grid[:, :, 0, 1], np.array(q)[:, None] - 2.0, atol=1e-5)  # rows: the second
    image = train.tile(grid)  # the figure: cell (i, j) at rows 28i.., columns 28j..
    assert image.shape == (420, 420) and np.array_equal(image[3 * 28 : 4 * 28, 5 * 28 : 6 * 28], grid[3, 5])


def test_grid_smoothness_is_small_for_a_smooth_map_and_near_one_when_shuffled():
    from vae import train

    rng = np.random.default_rng(0)
    u, v = np.meshgrid(np.linspace(0, 1, 15), np.linspace(0, 1, 15))
    basis = rng.random((2, 784))
    smooth = (u[..., None] * basis[0] + v[..., None] * basis[1]).reshape(15, 15, 28, 28)
    assert train.grid_smoothness(smooth) < 0.3
    shuffled = smooth.reshape(225, 28, 28)[rng.permutation(225)].reshape(15, 15, 28, 28)
    assert 0.8 < train.grid_smoothness(shuffled) < 1.2
    assert train.grid_smoothness(np.full((15, 15, 28, 28), 0.3)) == 1.0  # one image repeated: no map


def test_knn_accuracy_against_brute_force():
    from vae import train

    rng = np.random.default_rng(0)
    ref, ref_labels = rng.normal(size=(300, 2)), rng.integers(0, 10, 300)
    queries, labels = rng.normal(size=(50, 2)), rng.integers(0, 10, 50)
    hits = 0
    for q, label in zip(queries, labels):
        nearest = np.argsort(((ref - q) ** 2).sum(1))[:5]
        hits += np.bincount(ref_labels[nearest], minlength=10).argmax() == label
    assert train.knn_accuracy(ref, ref_labels, queries, labels) == hits / 50
    assert train.knn_accuracy(ref, ref_labels, ref, ref_labels, k=1) == 1.0


@pytest.mark.data
@pytest.mark.backends
def test_smoke_run_records_resumes_and_refuses_other_settings(require_data, tmp_path, capsys):
    require_data("mnist/mnist.npz")
    from vae import train

    records = check_smoke_run(train, [], tmp_path, capsys, ["vae-smoke", "cvae-smoke"])
    for record in records:
        m = record["metrics"]
        assert m["neg_elbo"] == pytest.approx(m["recon"] + m["kl"]) and m["kl"] > 0
        assert m["iw_nll"] <= m["neg_elbo"] + 4 * m["iw_nll_se"] and m["iw_k"] == 4 and m["test_images"] == 500
        assert 0 <= m["knn_acc"] <= 1 and 0 < m["grid_smoothness"] < 1
    assert len(records[1]["metrics"]["class_means"]) == 10
    for name in ("vae-smoke-latent", "vae-smoke-grid", "cvae-smoke-latent", "cvae-smoke-grid"):
        assert (tmp_path / "records" / "vae" / f"{name}.png").is_file()
    with pytest.raises(SystemExit, match="another setup"):
        train.main(["--smoke", "--out", str(tmp_path / "records"), "--epochs", "2", "--models", "vae"])


@pytest.mark.data
def test_a_seed_gives_the_same_numbers_again(require_data, tmp_path):
    require_data("mnist/mnist.npz")
    from vae import train

    first, second = (train.main(["--smoke", "--models", "vae", "--out", str(tmp_path / k)])[0] for k in "ab")
    timing = {"epoch_time_s", "train_time_s"}
    assert {k: v for k, v in first["metrics"].items() if k not in timing} == {
        k: v for k, v in second["metrics"].items() if k not in timing
    }
    assert first["history"]["loss"] == second["history"]["loss"]
    # (that another seed draws otherwise is test_seeds_make_draws_repeat_and_different_seeds_differ)


def test_claim_holds_on_the_reference_and_fails_when_reversed():
    from utils import report, runs
    from vae import train

    reference = runs.load_results(runs.REFERENCE, "vae")
    assert train.CLAIM.verdict(reference, "full") == report.REPRODUCED
    # the control: the PCA's accuracy in place of the VAE's
    swapped = [{**r, "metrics": {**r["metrics"], "knn_acc": r["metrics"]["knn_acc_pca"]}} for r in reference]
    assert train.CLAIM.verdict(swapped, "full") == report.NOT_REPRODUCED


def test_mnist_is_checked_and_shaped_per_architecture(require_data):
    require_data("mnist/mnist.npz")
    from vae import train

    (x, y1h, y), (xt, _, yt) = train.load_mnist("mlp", 100, 50)
    assert x.shape == (100, 784) and xt.shape == (50, 784) and 0 <= x.min() and x.max() <= 1
    assert np.array_equal(y1h.argmax(1), y) and x.dtype == np.float32
    (xc, _, _), _ = train.load_mnist("conv", 10, 10)
    assert xc.shape == (10, 28, 28, 1)
