"""The reliability catalogue, crf/layers.py: one test per input the CRF cannot take as it is, asserting
the specific error or the correct value (an independent float64 oracle that enumerates every path).

Contract under test (crf/README.md, "What the layer accepts"): labels are tag ids (batch, T) or
(batch, T, 1), or one-hot (batch, T, K); at real steps a tag must be a whole number in [0, K) and a
one-hot row a single 1; padded steps may hold anything. Wrong shapes raise a ValueError that names
them. Inside a compiled step nothing can raise, so an invalid label or a NaN / +inf emission at a real
step makes that sequence's loss NaN (and decoding gives score NaN, tags -1); -inf marks a tag that is
impossible at that step; a path the constraints forbid has loss +inf and is never decoded.
"""

import itertools
import re

import numpy as np
import pytest
from conftest import BACKEND, grad

pytest.importorskip(BACKEND, reason=f"KERAS_BACKEND={BACKEND} but {BACKEND} is not installed")
import keras  # noqa: E402

from crf.layers import CRF, ZeroMasked, allowed_transitions, build_tagger  # noqa: E402

pytestmark = pytest.mark.layers
np_ = keras.ops.convert_to_numpy
BMES = allowed_transitions("bmes", "sbme")


def make_crf(k=4, seed=0, **constraints):
    crf = CRF(k, **constraints)
    crf.build((None, None, k))
    rng = np.random.default_rng(seed)
    for w in crf.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    return crf


def oracle(crf, emissions, length=None):
    """Every allowed path of one sequence in float64: {path: score}."""
    k = crf.num_tags
    x = np.asarray(emissions, np.float64)[:length]
    trans = np_(crf.transitions).astype(np.float64)
    start, end = np_(crf.start_transitions).astype(np.float64), np_(crf.end_transitions).astype(np.float64)
    allowed = crf.allowed if crf.allowed is not None else np.ones((k, k), bool)
    first = crf.allowed_start if crf.allowed_start is not None else np.ones(k, bool)
    last = crf.allowed_end if crf.allowed_end is not None else np.ones(k, bool)
    paths = {}
    for path in itertools.product(range(k), repeat=len(x)):
        if not (first[path[0]] and last[path[-1]] and all(allowed[a, b] for a, b in zip(path, path[1:]))):
            continue
        score = start[path[0]] + end[path[-1]] + sum(x[t, y] for t, y in enumerate(path))
        paths[path] = score + sum(trans[a, b] for a, b in zip(path, path[1:]))
    return paths


def log_sum_exp(values):
    values = np.array(list(values))
    top = values.max()
    return top + np.log(np.exp(values - top).sum())


def problem(batch=3, steps=5, k=4, seed=1, scale=2.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, steps, k)) * scale).astype("float32"), rng.integers(0, k, (batch, steps))


def obeys(path, rules):
    return (
        rules["allowed_start"][path[0]]
        and rules["allowed_end"][path[-1]]
        and all(rules["allowed"][a, b] for a, b in zip(path, path[1:]))
    )


# ---- labels --------------------------------------------------------------------------------------


def test_labels_shaped_batch_T_1_are_tag_ids_not_one_hot():
    """(batch, T, 1) labels were read as one-hot, so every tag became 0; now they are the ids."""
    crf = make_crf()
    x, y = problem()
    np.testing.assert_allclose(np_(crf.loss(y[:, :, None], x)), np_(crf.loss(y, x)), rtol=1e-6)
    assert not np.allclose(np_(crf.loss(y[:, :, None], x)), np_(crf.loss(np.zeros_like(y), x)))  # control


def test_one_hot_labels_give_the_tag_ids_loss():
    crf = make_crf()
    x, y = problem()
    np.testing.assert_allclose(np_(crf.loss(np.eye(4, dtype="float32")[y], x)), np_(crf.loss(y, x)), rtol=1e-6)


@pytest.mark.parametrize("shape", [(3, 5, 3), (3, 5, 5), (3, 5, 4, 1), (15,)], ids=str)
def test_labels_of_another_shape_raise_naming_it(shape):
    crf = make_crf()
    x, _ = problem()
    with pytest.raises(
        ValueError, match=r"labels must be tag ids of shape \(batch, T\).*got shape " + re.escape(str(shape))
    ):
        crf.loss(np.zeros(shape, "float32"), x)


@pytest.mark.parametrize("bad", [4, -1, 1e10, 1.5, float("nan")], ids=lambda v: f"tag={v}")
def test_a_tag_outside_0_K_at_a_real_step_makes_that_sequence_nan(bad):
    """Tags were clipped to a valid tag (a silent wrong answer); now that sequence's loss is NaN and
    the others are unchanged."""
    crf = make_crf()
    x, y = problem()
    labels = y.astype("float32")
    labels[1, 2] = bad
    loss, clean = np_(crf.loss(labels, x)), np_(crf.loss(y, x))
    assert np.isnan(loss[1]) and np.allclose(loss[[0, 2]], clean[[0, 2]], rtol=1e-6)
    assert np.isnan(np_(crf.log_likelihood(x, labels))[1]) and np.isnan(np_(crf.accuracy(labels, x))[1])


@pytest.mark.parametrize("row", [[0, 0, 0, 0], [1, 1, 0, 0], [0.5, 0.5, 0, 0], [2, -1, 0, 0]], ids=str)
def test_a_malformed_one_hot_row_at_a_real_step_makes_that_sequence_nan(row):
    crf = make_crf()
    x, y = problem()
    hot = np.eye(4, dtype="float32")[y]
    hot[0, 3] = row
    loss = np_(crf.loss(hot, x))
    assert np.isnan(loss[0]) and np.allclose(loss[1:], np_(crf.loss(y, x))[1:], rtol=1e-6)


def test_padded_steps_may_hold_any_label():
    crf = make_crf()
    x, y = problem()
    mask = np.ones(y.shape, bool)
    mask[:, 3:] = False
    junk = y.astype("float32")
    junk[:, 3:] = [-1, 99]
    np.testing.assert_allclose(np_(crf.log_likelihood(x, junk, mask)), np_(crf.log_likelihood(x, y, mask)), rtol=1e-6)


def test_training_on_an_out_of_range_tag_shows_a_nan_loss_compiled():
    """Inside a compiled train step nothing can raise: the loss becomes NaN and TerminateOnNaN stops."""
    tokens = keras.Input((None,), dtype="int32")
    crf = CRF(4)
    model = keras.Model(tokens, crf(keras.layers.Dense(4)(keras.layers.Embedding(10, 8, mask_zero=True)(tokens))))
    jit = {"jit_compile": True} if BACKEND == "tensorflow" else {}
    model.compile(optimizer="adam", loss=crf.loss, **jit)
    x = np.random.default_rng(0).integers(1, 10, (16, 6))
    y = x % 4
    good = model.fit(x, y, epochs=1, verbose=0).history["loss"]
    y[5, 2] = 7
    bad = model.fit(x, y, epochs=3, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()]).history["loss"]
    assert np.isfinite(good[0]) and np.isnan(bad[0]) and len(bad) == 1


def test_labels_of_a_path_the_rules_forbid_give_an_infinite_loss_and_finite_gradients():
    """Probability 0, so the loss is +inf (it was about 1e30); the other rows and every gradient stay finite."""
    crf = make_crf(**BMES)
    x, _ = problem()
    y = np.array([[1, 2, 3, 0, 0], [0, 0, 1, 3, 0], [1, 1, 3, 0, 0]])  # the last: b b is forbidden
    loss = np_(crf.loss(y, x))
    assert loss[2] == np.inf and np.all(np.isfinite(loss[:2]))
    for b in range(2):
        np.testing.assert_allclose(
            loss[b], log_sum_exp(oracle(crf, x[b]).values()) - oracle(crf, x[b])[tuple(y[b])], rtol=1e-4
        )
    assert np.all(np.isfinite(grad(lambda e: crf.log_likelihood(e, y[:2]), x[:2])))


# ---- shapes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask_shape", [(3, 4), (3, 6), (2, 5), (3, 5, 1)], ids=["shorter", "longer", "other batch", "rank 3"]
)
def test_a_mask_of_another_shape_raises_naming_both_shapes(mask_shape):
    """A shorter mask used to drop the trailing tokens silently."""
    crf = make_crf()
    x, y = problem()
    for call in (
        lambda m: crf.decode(x, m),
        lambda m: crf.log_likelihood(x, y, m),
        lambda m: crf.marginals(x, m),
        lambda m: crf(x, mask=m),
    ):
        with pytest.raises(
            ValueError, match=r"mask must have shape \(batch, T\) = \(3, 5\).*got " + re.escape(str(mask_shape))
        ):
            call(np.ones(mask_shape, bool))


@pytest.mark.parametrize("tags_shape", [(3, 4), (3, 6), (3,)], ids=str)
def test_tags_of_another_length_raise_naming_both_shapes(tags_shape):
    crf = make_crf()
    x, _ = problem()
    with pytest.raises(ValueError, match=r"tags must have shape \(batch, T\) = \(3, 5\)"):
        crf.log_likelihood(x, np.zeros(tags_shape, "int32"))


@pytest.mark.parametrize("shape", [(3, 5, 3), (3, 5, 5), (5, 4), (3, 5, 4, 1)], ids=str)
def test_emissions_of_another_shape_raise_naming_it(shape):
    crf = make_crf()
    with pytest.raises(
        ValueError, match=r"emissions must have shape \(batch, T, 4\).*got shape " + re.escape(str(shape))
    ):
        crf.decode(np.zeros(shape, "float32"))
    with pytest.raises(ValueError, match="emissions must have shape"):
        CRF(4)(np.zeros(shape, "float32"))  # building too


@pytest.mark.parametrize("value", [0, -2, 2.5, True, "4"], ids=repr)
def test_num_tags_and_top_k_must_be_positive_integers(value):
    with pytest.raises(ValueError, match=f"CRF: num_tags must be a positive integer, got {value!r}"):
        CRF(value)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        make_crf().decode(problem()[0], top_k=value)


def test_length_0_sequences_give_empty_answers():
    """T = 0 gave a raw backend error; now: log-likelihood 0, empty tags, score 0, empty marginals."""
    crf = make_crf(**BMES)
    x = np.zeros((2, 0, 4), "float32")
    tags, scores = crf.decode(x)
    assert np_(tags).shape == (2, 0) and np.all(np_(scores) == 0)
    assert np_(crf.decode(x, top_k=3)[0]).shape == (2, 3, 0)
    assert np.all(np_(crf.log_likelihood(x, np.zeros((2, 0), "int32"))) == 0)
    assert np.all(np_(crf.log_partition(x)) == 0) and np_(crf.marginals(x)).shape == (2, 0, 4)
    assert np.all(np_(crf.loss(np.zeros((2, 0)), x)) == 0)


def test_an_empty_batch_gives_empty_answers():
    crf = make_crf(**BMES)
    x = np.zeros((0, 5, 4), "float32")
    assert np_(crf.decode(x)[0]).shape == (0, 5) and np_(crf.decode(x, top_k=2)[1]).shape == (0, 2)
    assert np_(crf.log_likelihood(x, np.zeros((0, 5), "int32"))).shape == (0,)
    assert np_(crf.marginals(x)).shape == (0, 5, 4)


@pytest.mark.parametrize("dtype", ["float16", "float64", "int32"])
def test_other_emission_dtypes_give_the_float32_answer(dtype):
    crf = make_crf()
    x, y = problem()
    x = np.round(x) if dtype == "int32" else x
    cast = x.astype(dtype)
    same = cast.astype("float32")
    np.testing.assert_allclose(np_(crf.log_likelihood(cast, y)), np_(crf.log_likelihood(same, y)), rtol=1e-6)
    np.testing.assert_array_equal(np_(crf.decode(cast)[0]), np_(crf.decode(same)[0]))


def test_length_1_with_rules_decodes_a_tag_allowed_both_first_and_last():
    crf = make_crf(**BMES)
    x = np.array([[[0.0, 9.0, 9.0, 9.0]]], "float32")  # s is the only tag a word of one character may take
    tags, scores = crf.decode(x)
    assert np_(tags).tolist() == [[0]] and np.isfinite(np_(scores)[0])
    np.testing.assert_allclose(np_(crf.marginals(x))[0, 0], [1, 0, 0, 0])


# ---- emissions -----------------------------------------------------------------------------------


def test_a_nan_or_inf_emission_at_a_real_step_is_nan_for_its_row_only():
    """Decoding ignored a NaN emission and returned a path; now the row's score is NaN and its tags -1
    (row 1: a NaN, row 2: +inf; rows 0 and 3 are clean and keep their answers)."""
    crf = make_crf(**BMES)
    x, y = problem(batch=4)
    clean = x.copy()
    x[1, 2, 3], x[2, 4, 0] = np.nan, np.inf
    tags, scores = map(np_, crf.decode(x))
    assert np.all(np.isnan(scores[1:3])) and np.all(tags[1:3] == -1)
    for got, want in zip((tags, scores), map(np_, crf.decode(clean))):
        np.testing.assert_array_equal(got[[0, 3]], want[[0, 3]])
    assert np.all(np.isnan(np_(crf.log_likelihood(x, y))[1:3])) and np.all(np.isnan(np_(crf.log_partition(x))[1:3]))
    marginals = np_(crf.marginals(x))
    assert np.all(np.isnan(marginals[1:3])) and np.all(np.isfinite(marginals[[0, 3]]))
    assert np.all(np_(crf.decode(x, top_k=2)[0])[1:3] == -1)


def test_an_all_nan_step_in_a_model_output_is_not_taken_for_padding():
    """Without a mask, padding is a step whose every score is -inf (what ``call`` writes); an all-NaN
    step was taken for padding too, so the loss ignored it."""
    crf = make_crf()
    x, y = problem()
    x[0, 4] = np.nan
    assert np.isnan(np_(crf.loss(y, x))[0]) and np.isnan(np_(crf.accuracy(y, x))[0])
    x[0, 4] = -np.inf  # the padding marker: now it is padding
    np.testing.assert_allclose(np_(crf.loss(y, x))[0], np_(crf.log_likelihood(x[:1, :4], y[:1, :4]))[0] * -1, rtol=1e-5)


def test_anything_at_a_padded_step_leaves_every_answer_unchanged():
    """NaN, +inf, -inf and 1e30 at padded steps (right, left and a hole) change nothing."""
    crf = make_crf(**BMES)
    x, y = problem(batch=4)
    mask = np.ones(y.shape, bool)
    mask[0, 3:], mask[2, :2], mask[3, 2] = False, False, False
    junk = np.resize(np.array([np.nan, np.inf, -np.inf, 1e30], "float32"), x.shape)
    dirty = np.where(mask[:, :, None], x, junk)
    for f in (
        lambda e: crf.decode(e, mask, top_k=3),
        lambda e: crf.log_likelihood(e, y, mask),
        lambda e: crf.marginals(e, mask),
    ):
        for got, want in zip(keras.tree.flatten(f(dirty)), keras.tree.flatten(f(x))):
            np.testing.assert_array_equal(np_(got), np_(want))


def test_minus_inf_marks_a_tag_impossible_at_that_step():
    """The oracle without the paths through it; the gradient stays finite, equal to one-hot minus the
    marginals (0 at the impossible tag)."""
    crf = make_crf()
    x, y = problem(batch=1)
    x[0, 1, [0, 2]] = -np.inf
    y[0, 1] = 1
    paths = {p: s for p, s in oracle(crf, np.where(np.isfinite(x[0]), x[0], 0)).items() if p[1] not in (0, 2)}
    log_z = log_sum_exp(paths.values())
    np.testing.assert_allclose(np_(crf.log_likelihood(x, y))[0], paths[tuple(y[0])] - log_z, rtol=1e-5)
    assert np_(crf.decode(x)[0])[0, 1] in (1, 3)
    g = grad(lambda e: crf.log_likelihood(e, y), x)
    marginals = np.zeros((5, 4))
    for p, s in paths.items():
        marginals[range(5), p] += np.exp(s - log_z)
    np.testing.assert_allclose(g[0], np.eye(4)[y[0]] - marginals, atol=1e-5)
    np.testing.assert_allclose(np_(crf.marginals(x))[0], marginals, atol=1e-5)


def test_an_unreachable_tag_gives_finite_gradients_not_nan():
    """With -inf emissions and rules, a tag can be unreachable at a step (every way in is -inf): the
    forward recursion's log-sum-exp over nothing is -inf, and its gradient must be 0, not NaN."""
    crf = make_crf(**BMES)
    x, _ = problem(batch=1)
    x[0, 0, [0, 2, 3]] = -np.inf  # only b may start; then only m or e follow
    x[0, 1, 2] = -np.inf  # and not m: e, so s or b next
    y = np.array([[1, 3, 0, 1, 3]])
    assert np.all(np.isfinite(grad(lambda e: crf.log_likelihood(e, y), x)))
    assert np.isfinite(np_(crf.log_likelihood(x, y))[0])


def test_huge_finite_emissions_keep_the_rules_and_the_exact_answer():
    """Emissions near 1e30 used to decode a path the BMES rules forbid, and the marginals reached inf.
    Rows at scales 1e4, 1e30 and 3e38 against a float64 oracle: the best path (and 3 best, all
    allowed), its score, marginals that sum to 1, and log-likelihoods of the best and another path."""
    crf = make_crf(**BMES)
    scales = np.array([1e4, 1e30, 3e38])
    x, _ = problem(batch=3, steps=4, seed=3, scale=1.0)
    x = (x / np.abs(x).max(axis=(1, 2), keepdims=True) * scales[:, None, None]).astype("float32")
    tags, scores = map(np_, crf.decode(x))
    top_tags = np_(crf.decode(x, top_k=3)[0])
    marginals = np_(crf.marginals(x))
    other = np.array([[0, 1, 3, 0], [1, 3, 1, 3], [0, 0, 0, 0]])
    nll_best, nll_other = (-np_(crf.log_likelihood(x, t)) for t in (tags, other))
    for b, scale in enumerate(scales):
        paths = oracle(crf, x[b])
        best = max(paths, key=paths.get)
        assert obeys(tags[b], BMES) and tuple(tags[b]) == best
        assert all(obeys(p, BMES) for p in top_tags[b])
        assert np.all(np.isfinite(marginals[b])) and np.allclose(marginals[b].sum(-1), 1, atol=1e-5)
        assert marginals[b][range(4), best].min() > 0.99  # at this scale the best path takes everything
        if scale < 3e38:  # 3e38 x 4 steps is beyond float32: the score is inf, the path still right
            np.testing.assert_allclose(scores[b], paths[best], rtol=1e-5)
            assert 0 <= nll_best[b] < 1e-3 * scale
            np.testing.assert_allclose(nll_other[b], paths[best] - paths[tuple(other[b])], rtol=1e-4)


def test_decode_outputs_carry_no_gradient_and_convert_to_numpy():
    """On PyTorch ``decode`` returned tensors that required grad, so ``np.asarray`` on them failed."""
    crf = make_crf()
    x, _ = problem()
    tags, scores = crf.decode(x, top_k=2)  # the scores depend on the weights, which require grad
    assert np.asarray(tags).shape == (3, 2, 5) and np.asarray(scores).shape == (3, 2)
    assert np.asarray(crf(x, decode=True)).shape == (3, 5)


def test_build_tagger_on_a_model_without_a_crf_output_says_how_to_build_one():
    tokens = keras.Input((None,), dtype="int32")
    crf = CRF(4)
    emissions = keras.layers.Dense(4)(keras.layers.Embedding(10, 8)(tokens))
    inner = keras.Model(tokens, keras.layers.Activation("linear")(crf(emissions)))  # CRF inside, not last
    for model in (keras.Model(tokens, emissions), inner):
        with pytest.raises(ValueError, match=r"is not made by a CRF layer.*crf\(emissions, decode=True\)"):
            build_tagger(model)


@pytest.mark.parametrize("mask_shape", [(2, 4), (2, 6), (3, 5), (2, 5, 1)], ids=str)
def test_zero_masked_with_a_mask_of_another_shape_raises_naming_both(mask_shape):
    x = np.ones((2, 5, 3), "float32")
    with pytest.raises(
        ValueError, match=r"ZeroMasked: .*the same batch and T, got \(2, 5, 3\) and " + re.escape(str(mask_shape))
    ):
        ZeroMasked()(x, mask=np.ones(mask_shape, bool))
    np.testing.assert_array_equal(np_(ZeroMasked()(x, mask=np.array([[1, 1, 0, 0, 0]] * 2))).sum(), 12)  # control


def test_a_path_whose_score_overflows_float32_is_still_decoded():
    """Every emission near -1e37 over 40 steps: the best path's score is below float32's range (-inf),
    but the path exists and is decoded (tags -1 mean "no path", and there is one)."""
    crf = make_crf(k=3)
    x = (np.random.default_rng(0).normal(size=(1, 40, 3)) - 1e37).astype("float32")
    tags, scores = map(np_, crf.decode(x))
    np.testing.assert_array_equal(tags, np_(crf.decode(x + 1e37)[0]))  # the same steps, up to a constant each
    assert np.all(tags >= 0) and scores[0] == -np.inf
    log_z = np_(crf.log_partition(np.full((1, 4, 3), 3.4e38, "float32")))
    assert log_z[0] == np.inf  # past float32's range: +inf, not NaN


@pytest.mark.parametrize("shift", [1e8, -1e30, 3e38], ids=str)
def test_adding_a_constant_to_one_step_changes_no_probability(shift):
    """A step whose tags all score the same constant multiplies every path by the same factor, whatever
    the constant: marginals, best paths and log-likelihoods must be those of the constant 0 (they
    moved by 7% at 1e8)."""
    crf = make_crf(3, **allowed_transitions("bio", ["O", "B-X", "I-X"]))
    x, _ = problem(batch=2, k=3)
    y = np.array([[0, 1, 2, 2, 0], [1, 2, 0, 1, 2]])
    x[:, 2, :] = 0.0
    shifted = x.copy()
    shifted[:, 2, :] = np.float32(shift)
    np.testing.assert_allclose(np_(crf.marginals(shifted)), np_(crf.marginals(x)), atol=1e-5)
    np.testing.assert_array_equal(np_(crf.decode(shifted, top_k=2)[0]), np_(crf.decode(x, top_k=2)[0]))
    np.testing.assert_allclose(np_(crf.log_likelihood(shifted, y)), np_(crf.log_likelihood(x, y)), atol=1e-4)


def test_rules_that_leave_no_path_give_minus_inf_and_no_tags():
    """Length 1 where no tag may both start and end: log Z = -inf, decode finds nothing (-1, -inf),
    marginals are undefined (NaN); the other row, of length 2, is answered."""
    rules = {"allowed": np.ones((2, 2), bool), "allowed_start": np.array([1, 0]), "allowed_end": np.array([0, 1])}
    crf = make_crf(2, **rules)
    x = np.zeros((2, 2, 2), "float32")
    mask = np.array([[1, 0], [1, 1]], bool)
    tags, scores = map(np_, crf.decode(x, mask))
    assert tags[0].tolist() == [-1, -1] and scores[0] == -np.inf and tags[1].tolist() == [0, 1]
    log_z = np_(crf.log_partition(x, mask))
    assert log_z[0] == -np.inf and np.isfinite(log_z[1])
    marginals = np_(crf.marginals(x, mask))
    assert np.all(np.isnan(marginals[0, 0])) and np.allclose(marginals[1], [[1, 0], [0, 1]])


def test_labels_masks_and_emissions_as_lists_bools_or_variables_are_read_as_arrays():
    crf = make_crf(2)
    x, y = problem(k=2)
    want = np_(crf.log_likelihood(x, y))
    np.testing.assert_allclose(np_(crf.log_likelihood(x.tolist(), y.tolist())), want, rtol=1e-6)
    np.testing.assert_allclose(np_(crf.log_likelihood(x, y.astype(bool))), want, rtol=1e-6)  # K = 2: ids 0 and 1
    np.testing.assert_allclose(-np_(crf.loss(y.astype(bool), x.tolist())), want, rtol=1e-6)
    np.testing.assert_allclose(np_(crf.log_partition(keras.Variable(x))), np_(crf.log_partition(x)), rtol=1e-6)
    mask = [[1, 1, 1, 0, 0]] * 3
    np.testing.assert_array_equal(np_(crf(x, mask=mask)), np_(crf(x, mask=np.array(mask, bool))))
    assert np_(ZeroMasked()(x, mask=mask))[:, 3:].sum() == 0


@pytest.mark.parametrize("where", ["labels", "tags", "mask", "emissions"])
def test_strings_or_complex_numbers_are_refused_naming_the_input(where):
    crf = make_crf()
    x, y = problem()
    text = np.full(y.shape, "a")
    calls = {
        "labels": lambda: crf.loss(text, x),
        "tags": lambda: crf.log_likelihood(x, y.astype(complex)),
        "mask": lambda: crf.decode(x, text),
        "emissions": lambda: crf.decode(x.astype(complex)),
    }
    with pytest.raises(ValueError, match=f"CRF: {where} must hold numbers or booleans, got dtype"):
        calls[where]()


def test_marginals_carry_no_gradient_and_convert_to_numpy():
    """Like decode, an inference output (on TensorFlow its in-loop buffer has no gradient)."""
    crf = make_crf()
    marginals = crf.marginals(problem()[0])
    assert np.asarray(marginals).shape == (3, 5, 4)
