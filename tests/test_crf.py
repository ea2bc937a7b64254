"""crf/: the CRF layer against an independent brute-force oracle that enumerates every tag path.

The oracle (below) scores each of the K^n paths of a tiny problem in float64 NumPy straight from the
definition, score = start[y_1] + sum x_t[y_t] + sum trans[y_t-1, y_t] + end[y_n], and derives log Z,
the log-likelihood, the k best paths and the marginals from that list. It shares no code with the layer.
"""

import ast
import io
import itertools
import json
import os
import subprocess
import sys
import textwrap
import types
import zlib

import numpy as np
import pytest
from conftest import BACKEND, REPO, Killed, check_smoke_run, grad, run_copied_alone

pytest.importorskip(BACKEND, reason=f"KERAS_BACKEND={BACKEND} but {BACKEND} is not installed")
import keras  # noqa: E402

from crf import segment  # noqa: E402
from crf.layers import CRF, FORBIDDEN, ZeroMasked, allowed_transitions, build_tagger  # noqa: E402
from crf.scoring import bakeoff_score, spans, word_set_score  # noqa: E402
from crf.segment import (  # noqa: E402
    Encoder,
    Ensemble,
    Segmenter,
    _apply_rules,
    _tag_starts,
    _word_starts,
    apply_rules,
    bigrams,
    build_vocab,
    encode,
    features,
    normalize,
    tags_to_words,
    viterbi,
    word_tags,
)
from crf.segment import _batches as segment_batches  # noqa: E402
from crf.segment import padded_length as segment_padded

np_ = keras.ops.convert_to_numpy
TOL = 1e-4


# ---- the oracle -------------------------------------------------------------------------------------


class Oracle:
    """Every path of one sequence, scored from the definition in float64."""

    def __init__(self, emissions, positions, trans, start, end, allowed=None, allowed_start=None, allowed_end=None):
        k = trans.shape[0]
        self.positions = positions
        self.paths, scores = [], []
        for path in itertools.product(range(k), repeat=len(positions)):
            if path and (
                (allowed is not None and not all(allowed[a, b] for a, b in zip(path, path[1:])))
                or (allowed_start is not None and not allowed_start[path[0]])
                or (allowed_end is not None and not allowed_end[path[-1]])
            ):
                continue  # a forbidden path has probability 0
            s = sum(emissions[p, y] for p, y in zip(positions, path)) + sum(trans[a, b] for a, b in zip(path, path[1:]))
            s += (start[path[0]] + end[path[-1]]) if path else 0.0
            self.paths.append(path)
            scores.append(s)
        self.scores = np.array(scores, dtype=np.float64)
        self.log_z = np.logaddexp.reduce(self.scores) if len(positions) else 0.0
        self.k = k

    def score(self, path):
        return self.scores[self.paths.index(tuple(path))]

    def best(self, n):
        order = np.argsort(-self.scores, kind="stable")[:n]
        return [self.paths[i] for i in order], self.scores[order]

    def marginals(self, length):
        out = np.zeros((length, self.k))
        probs = np.exp(self.scores - self.log_z)
        for path, p in zip(self.paths, probs):
            for pos, y in zip(self.positions, path):
                out[pos, y] += p
        return out


def make_crf(k, boundary=True, seed=0, **constraints):
    crf = CRF(k, boundary=boundary, **constraints)
    crf.build((None, None, k))
    rng = np.random.default_rng(seed)
    for w in crf.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    return crf


def weights(crf):
    k = crf.num_tags
    trans = np_(crf.transitions).astype(np.float64)
    if not crf.boundary:
        return trans, np.zeros(k), np.zeros(k)
    return trans, np_(crf.start_transitions).astype(np.float64), np_(crf.end_transitions).astype(np.float64)


MASKS = {  # (batch, T=5): full, right padding, left padding, length 1, empty; and masks with holes
    "right": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], bool),
    "left": np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], bool),
    "holes": np.array([[1, 0, 1, 0, 1], [0, 1, 1, 0, 1], [1, 0, 0, 0, 1], [0, 1, 0, 1, 0]], bool),
}
CASES = [  # (K, boundary, scheme)
    (3, True, None),
    (4, False, None),
    (4, True, "bmes"),
    (3, True, "bio"),
]


def case(k, boundary, scheme, padding, seed=0):
    constraints = {}
    if scheme == "bmes":
        constraints = allowed_transitions("bmes", "sbme")
    elif scheme == "bio":
        constraints = allowed_transitions("bio", ["O", "B-X", "I-X"])
    crf = make_crf(k, boundary, seed, **constraints)
    mask = MASKS[padding]
    emissions = np.random.default_rng(seed + 1).normal(size=(mask.shape[0], mask.shape[1], k)).astype("float32") * 2
    trans, start, end = weights(crf)
    oracles = [
        Oracle(emissions[b].astype(np.float64), np.flatnonzero(mask[b]), trans, start, end, **constraints)
        for b in range(mask.shape[0])
    ]
    return crf, emissions, mask, oracles


PARAMS = [
    pytest.param(*c, p, id=f"K{c[0]}-{'boundary' if c[1] else 'noboundary'}-{c[2] or 'free'}-{p}")
    for c in CASES
    for p in ("right", "left")
] + [pytest.param(3, True, "bio", "holes", id="K3-boundary-bio-holes")]


# ---- agreement with the oracle ---------------------------------------------------------------------


@pytest.mark.layers
@pytest.mark.parametrize("k, boundary, scheme, padding", PARAMS)
def test_log_partition_and_log_likelihood_match_brute_force(k, boundary, scheme, padding):
    crf, emissions, mask, oracles = case(k, boundary, scheme, padding)
    np.testing.assert_allclose(np_(crf.log_partition(emissions, mask)), [o.log_z for o in oracles], atol=TOL, rtol=TOL)
    rng = np.random.default_rng(7)
    for _ in range(3):  # gold paths drawn from the allowed ones; padded positions hold junk tags
        tags = rng.integers(0, k, size=mask.shape)
        for b, o in enumerate(oracles):
            if o.paths and len(o.positions):
                tags[b, o.positions] = o.paths[rng.integers(len(o.paths))]
        expected = [o.score(tags[b, o.positions]) - o.log_z if len(o.positions) else 0.0 for b, o in enumerate(oracles)]
        np.testing.assert_allclose(np_(crf.log_likelihood(emissions, tags, mask)), expected, atol=TOL, rtol=TOL)


@pytest.mark.layers
@pytest.mark.parametrize("k, boundary, scheme, padding", PARAMS)
def test_viterbi_and_k_best_paths_match_brute_force(k, boundary, scheme, padding):
    crf, emissions, mask, oracles = case(k, boundary, scheme, padding)
    tags, scores = map(np_, crf.decode(emissions, mask))
    top_tags, top_scores = map(np_, crf.decode(emissions, mask, top_k=4))
    assert tags.shape == mask.shape and top_tags.shape == (mask.shape[0], 4, mask.shape[1])
    assert (
        tags.dtype == np.int32
        and np.all(tags[~mask] == -1)
        and np.all(top_tags[:, :, :][~np.repeat(mask[:, None], 4, 1)] == -1)
    )
    for b, o in enumerate(oracles):
        if not len(o.positions):
            assert scores[b] == 0 and np.all(top_scores[b] == 0)
            continue
        paths, best = o.best(4)
        assert tuple(tags[b, o.positions]) == paths[0]
        np.testing.assert_allclose(scores[b], best[0], atol=TOL, rtol=TOL)
        n = len(paths)  # fewer than 4 when fewer paths are allowed (length 1 with constraints)
        assert [tuple(top_tags[b, r, o.positions]) for r in range(n)] == paths
        np.testing.assert_allclose(top_scores[b, :n], best, atol=TOL, rtol=TOL)
        assert np.all(top_scores[b, n:] == FORBIDDEN) and np.all(top_tags[b, n:] == -1)  # impossible: none


@pytest.mark.layers
@pytest.mark.parametrize("k, boundary, scheme, padding", [p for p in PARAMS if p.values[3] == "right"])
def test_host_viterbi_of_the_segmenter_matches_brute_force(k, boundary, scheme, padding):
    """crf/segment.py decodes in NumPy with the layer's ``decoding_scores``: same best paths."""
    crf, emissions, mask, oracles = case(k, boundary, scheme, padding)
    paths = viterbi(emissions, mask.sum(axis=1), *map(np_, crf.decoding_scores()))
    assert paths == [list(o.best(1)[0][0]) if len(o.positions) else [] for o in oracles]
    assert viterbi(np.zeros((2, 0, k)), [0, 0], *map(np_, crf.decoding_scores())) == [[], []]
    with pytest.raises(ValueError, match="lengths"):
        viterbi(emissions, [9] * len(emissions), *map(np_, crf.decoding_scores()))  # longer than T


@pytest.mark.layers
@pytest.mark.parametrize("k, boundary, scheme, padding", PARAMS)
def test_marginals_match_brute_force(k, boundary, scheme, padding):
    crf, emissions, mask, oracles = case(k, boundary, scheme, padding)
    marginals = np_(crf.marginals(emissions, mask))
    for b, o in enumerate(oracles):
        np.testing.assert_allclose(marginals[b], o.marginals(mask.shape[1]), atol=TOL)
    np.testing.assert_allclose(marginals.sum(-1), mask.astype(float), atol=TOL)  # a distribution per real token


# ---- soft targets (distillation): CRF.soft_loss and path_marginals --------------------------------


def indicators(oracle, steps, weights=None):
    """What a distribution over ``oracle``'s paths (``weights``, default: the oracle's own probabilities)
    expects of each step, in CRF.soft_loss's layout (steps, K + K * K), by summing over every path."""
    k = oracle.k
    out = np.zeros((steps, k + k * k))
    probs = np.exp(oracle.scores - oracle.log_z) if weights is None else weights
    for path, p in zip(oracle.paths, probs):
        for i, (pos, y) in enumerate(zip(oracle.positions, path)):
            out[pos, y] += p
            if i:
                out[pos, k + path[i - 1] * k + y] += p
    return out


def one_path(oracle, path):
    """The weights over ``oracle``'s paths that put everything on ``path``."""
    return np.array([float(p == tuple(path)) for p in oracle.paths])


@pytest.mark.layers
@pytest.mark.parametrize("k, boundary, scheme, padding", PARAMS)
def test_soft_loss_is_the_cross_entropy_over_every_path(k, boundary, scheme, padding):
    """For a teacher distribution q over the allowed paths, soft_loss = -sum_y q(y) log p(y), summed over
    every path in float64; a path's one-hot indicators give its loss; a mix of targets, that mix of losses."""
    crf, emissions, mask, students = case(k, boundary, scheme, padding)
    _, _, _, teachers = case(k, boundary, scheme, padding, seed=5)
    steps = mask.shape[1]
    target = np.stack([indicators(t, steps) for t in teachers])
    expected = [
        -np.sum(np.exp(t.scores - t.log_z) * (s.scores - s.log_z)) if len(s.positions) else 0.0
        for s, t in zip(students, teachers)
    ]
    scores = crf(emissions, mask=mask)
    np.testing.assert_allclose(np_(crf.soft_loss(target.astype("float32"), scores)), expected, atol=TOL, rtol=TOL)
    best = [s.best(1)[0][0] if len(s.positions) else () for s in students]
    tags = np.zeros(mask.shape, int)
    for b, s in enumerate(students):
        tags[b, s.positions] = best[b]
    hot = np.stack([indicators(s, steps, one_path(s, best[b])) for b, s in enumerate(students)])
    nll = np_(crf.loss(tags, scores))
    np.testing.assert_allclose(np_(crf.soft_loss(hot.astype("float32"), scores)), nll, atol=TOL, rtol=TOL)
    mixed = (0.3 * hot + 0.7 * target).astype("float32")
    np.testing.assert_allclose(
        np_(crf.soft_loss(mixed, scores)), 0.3 * nll + 0.7 * np.array(expected), atol=TOL, rtol=TOL
    )


@pytest.mark.layers
@pytest.mark.parametrize("padding", ["right", "holes"])
def test_soft_loss_gradient_is_the_students_tag_probabilities_less_the_targets(padding):
    """d soft_loss / d emissions = p(y_t = j) - q(y_t = j) at real steps (both from every path), 0 on padding."""
    k, scheme = 3, "bio"
    crf, emissions, mask, students = case(k, True, scheme, padding, seed=2)
    _, _, _, teachers = case(k, True, scheme, padding, seed=6)
    target = np.stack([indicators(t, mask.shape[1]) for t in teachers]).astype("float32")
    got = grad(lambda e: crf.soft_loss(target, crf(e, mask=mask)), emissions)
    expected = np.stack([s.marginals(mask.shape[1]) for s in students]) - target[..., :k]
    np.testing.assert_allclose(got, expected, atol=TOL)
    assert np.all(got[~mask] == 0)


@pytest.mark.layers
@pytest.mark.parametrize("padding", ["right", "left"])
def test_soft_loss_gradients_for_the_crf_weights_match_finite_differences_of_the_oracle(padding):
    """d soft_loss / d transitions, start and end scores (autodiff) equal central differences of the
    cross-entropy summed over every path in float64, with BIO rules."""
    k, scheme = 3, "bio"
    constraints = allowed_transitions("bio", ["O", "B-X", "I-X"])
    crf, emissions, mask, _ = case(k, True, scheme, padding, seed=4)
    _, _, _, teachers = case(k, True, scheme, padding, seed=8)
    target = np.stack([indicators(t, mask.shape[1]) for t in teachers])
    trans, start, end = weights(crf)
    e64 = emissions.astype(np.float64)

    def oracle(tr=trans, st=start, en=end):
        total = 0.0
        for b, t in enumerate(teachers):
            if len(t.positions):
                s = Oracle(e64[b], t.positions, tr, st, en, **constraints)
                total -= np.sum(np.exp(t.scores - t.log_z) * (s.scores - s.log_z))
        return total

    scores = crf(emissions, mask=mask)
    for variable, fd in (
        (crf.transitions, central_differences(lambda x: oracle(tr=x), trans)),
        (crf.start_transitions, central_differences(lambda x: oracle(st=x), start)),
        (crf.end_transitions, central_differences(lambda x: oracle(en=x), end)),
    ):

        def loss_of(value, variable=variable):
            with keras.StatelessScope(state_mapping=[(variable, value)]):
                return crf.soft_loss(target.astype("float32"), scores)

        got = grad(loss_of, np_(variable))
        allowed = np.isfinite(fd)
        np.testing.assert_allclose(got[allowed], fd[allowed], atol=TOL)
        assert np.any(np.abs(fd[allowed]) > 1e-2)  # the weights matter: the check can fail


@pytest.mark.layers
@pytest.mark.parametrize("learn_transitions", [True, False])
def test_training_on_soft_targets_matches_the_teachers_tag_and_pair_probabilities(learn_transitions):
    """A student CRF with free emissions at every step (an embedding of the step) and its own scores,
    trained by compile(loss=crf.soft_loss) on a teacher CRF's expectations, ends with the teacher's tag
    and pair probabilities: the gradients reach the emissions and the CRF's own weights. The control:
    with its transitions frozen at other values, the pair probabilities stay off (unary scores cannot
    make up for pairwise ones)."""
    k, steps = 4, 5
    bmes = allowed_transitions("bmes", "sbme")
    teacher = make_crf(k, seed=3, **bmes)
    rng = np.random.default_rng(4)
    lengths = np.array([5, 4, 2, 5])
    teacher_emissions = rng.normal(size=(len(lengths), steps, k)) * 1.5
    target = segment.path_marginals(teacher_emissions, lengths, *map(np_, teacher.decoding_scores()))
    ids = np.where(
        np.arange(steps)[None] < lengths[:, None], np.arange(1, lengths.size * steps + 1).reshape(-1, steps), 0
    )
    keras.utils.set_random_seed(0)
    inputs = keras.Input((steps,), dtype="int32")
    emissions = keras.layers.Embedding(ids.size + 1, k, embeddings_initializer="zeros")(inputs)
    student = CRF(k, **bmes, transitions_initializer="zeros")
    model = keras.Model(inputs, student(emissions, mask=inputs))
    student.transitions.assign(rng.normal(size=(k, k)).astype("float32") * 2)
    student.transitions.trainable = learn_transitions
    model.compile(
        optimizer=keras.optimizers.Adam(0.1), loss=student.soft_loss, jit_compile=BACKEND == "tensorflow" or "auto"
    )
    # 400 steps on the same batch, as one epoch: the steps of 400 epochs without their per-epoch overhead
    repeats = 400
    model.fit(
        np.tile(ids, (repeats, 1)),
        np.tile(target.astype("float32"), (repeats, 1, 1)),
        batch_size=len(ids),
        verbose=0,
        shuffle=False,
    )
    learnt = segment.path_marginals(np_(model.predict(ids, verbose=0)), lengths, *map(np_, student.decoding_scores()))
    off = np.abs(learnt - target).max()
    if learn_transitions:
        assert off < 1e-2, off
    else:
        assert off > 5e-2, off


@pytest.mark.layers
def test_soft_loss_flags_targets_that_are_not_a_distribution():
    """Targets whose tags or pairs do not sum to 1, disagree with each other (pairs a step late), hold a
    negative or NaN entry, or weigh a pair at a sequence's first step give NaN for their row only (what
    padding steps hold is not read); mass
    on a forbidden move gives +inf (as loss does for a forbidden path); a wrong last axis raises."""
    k = 4
    crf, emissions, mask, students = case(k, True, "bmes", "right")
    target = np.stack([indicators(s, mask.shape[1]) for s in students]).astype("float32")
    scores = crf(emissions, mask=mask)
    good = np_(crf.soft_loss(target, scores))
    assert np.all(np.isfinite(good))  # the control: valid targets

    def spoilt(change):
        bad = target.copy()
        change(bad)
        return np_(crf.soft_loss(bad, scores))

    def put(index, value):
        return lambda bad: bad.__setitem__(index, value)

    def late(bad):  # row 0's pairs one step late
        bad[0, 2:, k:] = target[0, 1:-1, k:]

    for change in (
        lambda bad: bad[0, 1].__imul__(1.1),
        late,
        put((0, 3, slice(0, k)), [1.2, -0.2, 0.0, 0.0]),
        put((0, 0, k), 0.5),
        put((0, 4, 0), np.nan),
    ):
        out = spoilt(change)
        assert np.isnan(out[0]) and np.array_equal(out[1:], good[1:]), out
    assert np.array_equal(spoilt(put((1, 4, slice(None)), np.nan)), good)  # row 1's step 4 is padding: unread
    forbidden = [0, 2, 3, 0, 0]  # s m: m only after b or m
    hot = target.copy()
    hot[0] = 0
    for t, y in enumerate(forbidden):
        hot[0, t, y] = 1
        if t:
            hot[0, t, k + forbidden[t - 1] * k + y] = 1
    out = np_(crf.soft_loss(hot, scores))
    assert out[0] == np.inf and np_(crf.loss(np.array([forbidden] * 4), scores))[0] == np.inf
    with pytest.raises(ValueError, match=r"soft targets must have shape \(batch, T, K \+ K \* K\) = \(batch, T, 20\)"):
        crf.soft_loss(target[..., :k], scores)


@pytest.mark.layers
@pytest.mark.parametrize("k, boundary, scheme, padding", [p for p in PARAMS if p.values[3] == "right"])
def test_path_marginals_match_every_path(k, boundary, scheme, padding):
    """segment.path_marginals (NumPy, float64): each step's tag and pair probabilities, summed over every
    path; zeros on padding; a row without any path, or lengths past T, raise."""
    crf, emissions, mask, oracles = case(k, boundary, scheme, padding)
    scores = list(map(np_, crf.decoding_scores()))
    got = segment.path_marginals(emissions, mask.sum(axis=1), *scores)
    np.testing.assert_allclose(got, np.stack([indicators(o, mask.shape[1]) for o in oracles]), atol=1e-9)
    with pytest.raises(ValueError, match="lengths"):
        segment.path_marginals(emissions, [9] * len(emissions), *scores)
    with pytest.raises(ValueError, match="from 0 to T"):
        segment.path_marginals(emissions, [-1] * len(emissions), *scores)
    with pytest.raises(ValueError, match=rf"transitions must be \({k}, {k}\)"):
        segment.path_marginals(emissions, mask.sum(axis=1), scores[0][:1], *scores[1:])
    blocked = emissions.copy()
    blocked[0, 2] = -np.inf  # no tag possible at step 2 of row 0
    with pytest.raises(ValueError, match=r"rows \[0\] have no possible tag path"):
        segment.path_marginals(blocked, mask.sum(axis=1), *scores)


@pytest.mark.layers
def test_an_ensembles_marginals_at_the_temperature_of_its_size_are_its_mean_crfs():
    """Segmenter.path_marginals of an Ensemble of two copies of one segmenter, at temperature 2, are the
    segmenter's own; at temperature 1 they are sharper (the sum of the scores)."""
    seg = tiny_segmenter("strong")
    random_weights(seg.tagger, scale=0.05)  # emissions within +-1: probabilities far from 0 and 1
    texts = ["我爱北京天安门", "北京", "门"]
    own = seg.path_marginals(texts)
    pair = Ensemble([seg, seg])
    for mine, theirs in zip(own, pair.path_marginals(texts, temperature=2)):
        np.testing.assert_allclose(theirs, mine, atol=1e-6)
    sharper = pair.path_marginals(texts)
    assert max(np.abs(a - b).max() for a, b in zip(sharper, own)) > 1e-2  # the control
    assert [a.shape for a in own] == [(7, 20), (2, 20), (1, 20)]
    with pytest.raises(ValueError, match="temperature must be positive"):
        seg.path_marginals(texts, temperature=0)


def central_differences(f, x, h=1e-5):
    """d f / d x, one coordinate at a time, (f(x + h) - f(x - h)) / 2h, in float64."""
    out = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += h
        minus[idx] -= h
        out[idx] = (f(plus) - f(minus)) / (2 * h)
    return out


@pytest.mark.layers
@pytest.mark.parametrize("padding, scheme", [("right", None), ("left", None), ("left", "bio")])
def test_gradients_match_finite_differences_of_the_oracle(padding, scheme):
    """d log p(gold) / d emissions, transitions, start and end scores from autodiff equal central
    differences of the brute-force log-likelihood (float64), with and without constraints."""
    k = 3
    crf, emissions, mask, oracles = case(k, True, scheme, padding, seed=3)
    constraints = allowed_transitions("bio", ["O", "B-X", "I-X"]) if scheme else {}
    tags = np.zeros(mask.shape, int)
    for b, o in enumerate(oracles):  # gold paths among the allowed ones
        if len(o.positions):
            tags[b, o.positions] = o.best(1)[0][0]
    trans, start, end = weights(crf)

    def oracle_ll(e, tr, st=start, en=end):
        total = 0.0
        for b in range(mask.shape[0]):
            pos = np.flatnonzero(mask[b])
            if len(pos):
                o = Oracle(e[b], pos, tr, st, en, **constraints)
                total += o.score(tags[b, pos]) - o.log_z
        return total

    e64 = emissions.astype(np.float64)
    fd_e = central_differences(lambda e: oracle_ll(e, trans), e64)
    got_e = grad(lambda e: crf.log_likelihood(e, tags, mask), emissions)
    np.testing.assert_allclose(got_e, fd_e, atol=TOL)
    assert np.all(got_e[~mask] == 0)  # padding gets no gradient

    fd_t = central_differences(lambda t: oracle_ll(e64, t), trans)

    def ll_of_transitions(t):
        with keras.StatelessScope(state_mapping=[(crf.transitions, t)]):
            return crf.log_likelihood(emissions, tags, mask)

    np.testing.assert_allclose(grad(ll_of_transitions, np_(crf.transitions)), fd_t, atol=TOL)

    for variable, fd in (
        (crf.start_transitions, central_differences(lambda s: oracle_ll(e64, trans, st=s), start)),
        (crf.end_transitions, central_differences(lambda s: oracle_ll(e64, trans, en=s), end)),
    ):

        def ll_of(value, variable=variable):
            with keras.StatelessScope(state_mapping=[(variable, value)]):
                return crf.log_likelihood(emissions, tags, mask)

        np.testing.assert_allclose(grad(ll_of, np_(variable)), fd, atol=TOL)


def dynamic_programming(e, trans, start, end):
    """Forward-backward and Viterbi for one sequence ``e`` (n, K) in float64 NumPy, loops over steps,
    constraints as -inf scores: log Z, the marginals (n, K), the expected transition counts (K, K),
    the best path and its score. Independent of the layer (and of the brute-force oracle, too slow
    for long sequences)."""
    n, k = e.shape
    lse = lambda a, axis: np.logaddexp.reduce(a, axis=axis)
    alpha, beta = np.zeros((n, k)), np.zeros((n, k))
    alpha[0] = start + e[0]
    for t in range(1, n):
        alpha[t] = lse(alpha[t - 1][:, None] + trans, 0) + e[t]
    beta[-1] = end
    for t in range(n - 2, -1, -1):
        beta[t] = lse(trans + (e[t + 1] + beta[t + 1])[None, :], 1)
    log_z = lse(alpha[-1] + end, 0)
    with np.errstate(invalid="ignore"):
        marginals = np.nan_to_num(np.exp(alpha + beta - log_z))
        pairs = sum(
            np.nan_to_num(np.exp(alpha[t - 1][:, None] + trans + (e[t] + beta[t])[None, :] - log_z))
            for t in range(1, n)
        )
    delta, back = start + e[0], []
    for t in range(1, n):
        scores = delta[:, None] + trans
        back.append(scores.argmax(0))
        delta = scores.max(0) + e[t]
    path = [int((delta + end).argmax())]
    for pointers in reversed(back):
        path.append(int(pointers[path[-1]]))
    return log_z, marginals, pairs, path[::-1], float((delta + end).max())


def constrained_weights(crf, constraints):
    """The layer's transition, start and end scores in float64, with what ``constraints`` forbid as -inf."""
    trans, start, end = weights(crf)
    if constraints:
        trans = np.where(constraints["allowed"], trans, -np.inf)
        start = np.where(constraints["allowed_start"], start, -np.inf)
        end = np.where(constraints["allowed_end"], end, -np.inf)
    return trans, start, end


def dp_expectations(emissions, mask, trans, start, end):
    """Gold tags (the best paths: possible gold paths), log-likelihoods and their gradients for the
    emissions and the transitions (0 for a forbidden move, whose score is not used), the best paths and
    their scores, by ``dynamic_programming`` in float64 (constraints as -inf scores)."""
    k = trans.shape[0]
    tags = np.zeros(mask.shape, "int32")
    ll, d_e, d_t = np.zeros(len(mask)), np.zeros(mask.shape + (k,)), np.zeros((k, k))
    paths, best = [], []
    for b in range(len(mask)):
        positions = np.flatnonzero(mask[b])
        e = emissions[b, positions].astype(np.float64)
        log_z, marginals, pairs, path, score = dynamic_programming(e, trans, start, end)
        tags[b, positions] = path
        ll[b] = score - log_z
        d_e[b, positions] = np.eye(k)[path] - marginals
        for a, c in zip(path, path[1:]):
            d_t[a, c] += 1
        d_t -= pairs
        paths.append(path)
        best.append(score)
    return tags, ll, d_e, np.where(np.isfinite(trans), d_t, 0.0), paths, best


# 9 tags: O, and B and I of four kinds
BIO9 = allowed_transitions("bio", ["O"] + [f"{p}-{kind}" for kind in "ABCD" for p in "BI"])


def right_and_scattered(lengths, steps, rng):
    """A (2 x len(lengths), steps) mask: a right-padded row of each length, then a row of each length
    whose real steps are scattered by ``rng`` (holes, left padding)."""
    mask = np.zeros((2 * len(lengths), steps), bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
        mask[len(lengths) + b, np.sort(rng.choice(steps, n, replace=False))] = True
    return mask


def assert_decodes_like(decoded, scores, mask, paths, best, context=(), scored=None):
    """Decoded tags (batch, T) and scores equal to the oracle's best ``paths`` and scores, -1 on padding.
    With ``scored`` (the emissions and the three score tables, float64), a decoded path may differ
    from the oracle's where another path ties with it: its own score, summed along it, must then be
    the best."""
    for b in range(len(mask)):
        path = decoded[b, mask[b]].tolist()
        if scored is None or path == paths[b]:
            assert path == paths[b], (*context, b)
        else:
            emissions, trans, start, end = scored
            e = emissions[b, mask[b]].astype(np.float64)
            own = start[path[0]] + e[np.arange(len(path)), path].sum() + end[path[-1]]
            own += trans[path[:-1], path[1:]].sum()
            np.testing.assert_allclose(own, best[b], atol=1e-9, err_msg=str((*context, b, path, paths[b])))
        assert np.all(decoded[b, ~mask[b]] == -1)
    np.testing.assert_allclose(scores, best, atol=1e-3, rtol=1e-5)


@pytest.mark.layers
@pytest.mark.parametrize("scheme", [None, "bmes"])
def test_long_sequences_across_loop_chunks_match_dynamic_programming(scheme):
    """Lengths 1 to 3C + 5 (the recursions run C = ``_CHUNK`` steps per compiled iteration, so these
    cross 0 to 3 chunk boundaries and pad the last chunk differently), right padding, left padding
    and holes: the log-likelihood, its gradients for the emissions (one-hot minus marginals) and the
    transitions (counted minus expected moves), the best path and its score, against float64 dynamic
    programming."""
    k = 4
    constraints = allowed_transitions("bmes", "sbme") if scheme else {}
    crf = make_crf(k, True, seed=5, **constraints)
    rng = np.random.default_rng(6)
    from crf.layers import _CHUNK as c

    steps = 3 * c + 5
    lengths = [steps, 1, c, c + 1, 2 * c, 2 * c + 1, 3 * c, 3 * c + 1]
    mask = right_and_scattered(lengths, steps, rng)
    emissions = (rng.normal(size=(mask.shape[0], steps, k)) * 2).astype("float32")
    tags, expected_ll, expected_e, expected_t, paths, best = dp_expectations(
        emissions, mask, *constrained_weights(crf, constraints)
    )

    np.testing.assert_allclose(np_(crf.log_likelihood(emissions, tags, mask)), expected_ll, atol=1e-3, rtol=1e-4)
    got_e = grad(lambda x: crf.log_likelihood(x, tags, mask), emissions)
    np.testing.assert_allclose(got_e, expected_e, atol=1e-4)

    def ll_of_transitions(t):
        with keras.StatelessScope(state_mapping=[(crf.transitions, t)]):
            return crf.log_likelihood(emissions, tags, mask)

    got_t = grad(ll_of_transitions, np_(crf.transitions))
    np.testing.assert_allclose(got_t, expected_t, atol=2e-3)
    assert_decodes_like(*map(np_, crf.decode(emissions, mask)), mask, paths, best)


@pytest.mark.layers
def test_only_right_padded_masks_skip_the_reordering(monkeypatch):
    """``_prepare`` skips moving real steps to the front when every row already has them there (the
    oracle tests above check that both kinds of masks give the right answers): the check accepts
    right padding, empty rows, T = 0 and 1 and an empty batch, and refuses holes, left padding and a
    padding step before a real one; where ``ops.cond`` runs one branch (TensorFlow and PyTorch
    outside a graph), a right-padded batch never calls ``_left_align`` and a left-padded one does."""
    import crf.layers as layers

    expected = {"right": True, "left": False, "holes": False}
    for name, mask in MASKS.items():
        assert bool(np_(layers._right_padded(mask))) is expected[name], name
    assert bool(np_(layers._right_padded(np.array([[0, 0], [1, 0]], bool))))  # an empty row is right-padded
    assert not bool(np_(layers._right_padded(np.array([[1, 1], [0, 1]], bool))))
    for shape in ((2, 0), (3, 1), (0, 4)):
        assert bool(np_(layers._right_padded(np.ones(shape, bool)))), shape
    if BACKEND == "jax":  # lax.cond traces both branches
        return
    calls = []
    real_left_align = layers._left_align
    monkeypatch.setattr(layers, "_left_align", lambda mask: calls.append(1) or real_left_align(mask))
    crf, emissions, mask, _ = case(4, True, None, "right")
    crf.decode(emissions, mask)
    crf.log_likelihood(emissions, np.zeros(mask.shape, "int32"), mask)
    assert calls == []
    crf.decode(emissions, MASKS["left"])
    assert calls == [1]  # control: the spy sees the reordering when it is needed


def use_decoding_way(monkeypatch, way):
    """Switch ``_best_path`` to one way of decoding ("every-tag", "path-only", "batch-minor" or
    "tree"), optionally followed by ", rescaled every N" (``_RESCALE_EVERY``); returns the way's name.
    The tree is skipped on JAX: it runs on PyTorch only, and TensorFlow's run checks it is
    backend-neutral (20 s of eager JAX)."""
    import crf.layers as layers

    way, _, every = way.partition(", rescaled every ")
    if every:
        monkeypatch.setattr(layers, "_RESCALE_EVERY", int(every))
    if way == "tree" and BACKEND == "jax":
        pytest.skip("the tree runs on PyTorch only; TensorFlow's run checks it is backend-neutral (20 s of eager JAX)")
    monkeypatch.setattr(layers, "_PATH_ONLY_FROM", 0 if way == "path-only" else 10**9)
    monkeypatch.setattr(layers, "_MINOR_FROM", 0 if way == "batch-minor" else None)
    monkeypatch.setattr(layers, "_TREE_UP_TO", 10**9 if way == "tree" else 0)
    return way


@pytest.mark.layers
@pytest.mark.parametrize(
    "way",
    ["every-tag", "path-only", "batch-minor", "tree", "path-only, rescaled every 3", "batch-minor, rescaled every 3"],
)
def test_every_way_of_finding_the_best_path_matches_dynamic_programming(monkeypatch, way):
    """``_best_path`` finds where the path came from one step at a time along it (from
    ``_PATH_ONLY_FROM`` tags on), or for every tag and step at once (below it), or with its state
    batch minor and the rows shifted to end together (from ``_MINOR_FROM`` tags on), or (PyTorch up
    to ``_TREE_UP_TO`` tags) on a tree over the steps. Each way, at 4 tags and at 9 (BIO with four kinds),
    over right padding, left padding and holes (lengths 1 to 21: the tree's 20 leaves padded to 32,
    and 7, 8 and 16 moves): the best paths and scores of float64 dynamic programming, and on ties too
    (scores of 0 and 1). On ties the step-by-step ways keep the first best previous tag, as NumPy's
    argmax does; the tree may return another of the tied paths, whose own score must be the best.
    "Rescaled every 3": the forward state is taken less its maximum every third step only (PyTorch
    does so every ``_RESCALE_EVERY`` = 16 steps), on every backend."""
    import crf.layers as layers

    way = use_decoding_way(monkeypatch, way)
    minor_calls, minor = [], layers._minor_best_path
    monkeypatch.setattr(layers, "_minor_best_path", lambda *a: minor_calls.append(1) or minor(*a))
    rng = np.random.default_rng(12)
    mask = right_and_scattered([21, 1, 8, 9, 17, 20], 21, rng)
    differed = 0
    for k, constraints in ((4, {}), (9, BIO9)):
        crf = make_crf(k, True, seed=4, **constraints)
        for ties in (False, True):
            if ties:
                for w in crf.weights:
                    w.assign(rng.integers(0, 2, w.shape).astype("float32"))
                emissions = rng.integers(0, 2, mask.shape + (k,)).astype("float32")
            else:
                emissions = (rng.normal(size=mask.shape + (k,)) * 2).astype("float32")
            tables = constrained_weights(crf, constraints)
            *_, paths, best = dp_expectations(emissions, mask, *tables)
            decoded, scores = map(np_, crf.decode(emissions, mask))
            scored = (emissions, *tables) if way == "tree" and ties else None
            assert_decodes_like(decoded, scores, mask, paths, best, context=(k, ties), scored=scored)
            differed += sum(decoded[b, mask[b]].tolist() != paths[b] for b in range(len(mask)))
        # A row with no possible path (every tag impossible at one real step): no tags, score -inf;
        # the rows beside it are decoded as before.
        dead = emissions.copy()
        dead[3, np.flatnonzero(mask[3])[2]] = -np.inf
        decoded_dead, scores_dead = map(np_, crf.decode(dead, mask))
        assert np.all(decoded_dead[3] == -1) and scores_dead[3] == FORBIDDEN
        keep = np.arange(len(mask)) != 3
        assert np.array_equal(decoded_dead[keep], decoded[keep]) and np.array_equal(scores_dead[keep], scores[keep])
    # One step (T = 1), and a row without a real token beside a full and a left-padded one, at 9 tags.
    tables = constrained_weights(crf, BIO9)
    for mask in (np.array([[True], [True], [False]]), np.array([[1] * 6, [0] * 6, [0, 0, 0, 0, 1, 1]], bool)):
        emissions = (rng.normal(size=mask.shape + (9,)) * 2).astype("float32")
        decoded, scores = map(np_, crf.decode(emissions, mask))
        for b in range(len(mask)):
            if not mask[b].any():
                assert np.all(decoded[b] == -1) and scores[b] == 0.0
                continue
            *_, paths, best = dp_expectations(emissions[b : b + 1], mask[b : b + 1], *tables)
            assert decoded[b, mask[b]].tolist() == paths[0] and np.all(decoded[b, ~mask[b]] == -1), (way, mask.shape, b)
            np.testing.assert_allclose(scores[b], best[0], rtol=1e-5, atol=1e-4)
    # The tie rule differs: the tree returns other tied paths in some rows (which the check above
    # accepted by their scores only), the step-by-step ways none.
    assert (differed > 0) == (way == "tree"), differed
    assert bool(minor_calls) == (way == "batch-minor")  # the batch-minor way ran, and only there


@pytest.mark.layers
@pytest.mark.parametrize("every", [1, 3, 16])
@pytest.mark.parametrize("axis", [1, 0])
def test_the_viterbi_state_stays_near_zero_and_exact(monkeypatch, every, axis):
    """The single-best forward recursion (``_viterbi_states``), time-major (axis 1) and batch minor
    (axis 0), taking its state less its maximum every ``every`` steps, on scores with 2**20 added
    to each step (float32 then holds them to 1/8) and 100 to every move (neither changes a path):
    the maximum n steps after a rescaling lies between n times the smallest move score and n times
    the largest, and the states equal a float64 recursion on the same float32 inputs within 1e-2
    (rescaled every step, with no shift of the scores, within 0.5: 0.17 measured on PyTorch).
    Controls: never rescaled, the maximum leaves the bound; rescaled every 3 or 16 steps but without
    the scores first taken less each step's best (``_best_zero``), the states are off by more than
    1e-2."""
    import crf.layers as layers

    rng = np.random.default_rng(8)
    k, steps, batch = 5, 40, 3
    x = (rng.normal(size=(steps, batch, k)) * 2 + 2.0**20).astype("float32")
    trans = (100 + rng.normal(size=(k, k))).astype("float32")
    start = rng.normal(size=k).astype("float32")

    def states(rescale):
        monkeypatch.setattr(layers, "_RESCALE_EVERY", rescale)
        tensors = [keras.ops.convert_to_tensor(v) for v in (x if axis else np.transpose(x, (0, 2, 1)), trans, start)]
        out = np_(layers._viterbi_states(*tensors, axis)).astype(np.float64)
        return out if axis else np.transpose(out, (0, 2, 1))  # (T, batch, K)

    score = x[0].astype(np.float64) + start
    expected = [score - score.max(axis=1, keepdims=True)]
    shifted = x.astype(np.float64) - x.max(axis=2, keepdims=True)  # exact: the same best paths
    for t in range(1, steps):
        score = (expected[-1][:, :, None] + trans[None].astype(np.float64)).max(axis=1) + shifted[t]
        expected.append(score - score.max(axis=1, keepdims=True) if t % every == 0 else score)
    expected = np.stack(expected)
    since = (np.arange(steps) % every)[:, None]  # steps since the last rescaling

    def within(got):
        top = got.max(axis=2)
        return np.all(top >= since * trans.min() - 1e-2) and np.all(top <= since * trans.max() + 1e-2)

    got = states(every)
    assert within(got)
    assert not within(states(10**9))  # control: the bound fails without rescaling
    if every == 1:  # no shift: the sums round at 2**20 (to 1/8 a step), as the scores do
        np.testing.assert_allclose(got, expected, atol=0.5)
        return
    np.testing.assert_allclose(got, expected, atol=1e-2)
    monkeypatch.setattr(layers, "_best_zero", lambda x, axis: x)
    # control: without the shift the states also carry 2**20 a step, so compare each state less its
    # maximum (which the shift does not change): the sums over up to `every` steps rounded away the rest
    unshifted = states(every)
    relative = lambda s: s - s.max(axis=2, keepdims=True)  # noqa: E731
    assert np.abs(relative(unshifted) - relative(expected)).max() > 1e-2


@pytest.mark.layers
@pytest.mark.skipif(
    BACKEND == "jax",
    reason="JAX runs the log-space recursions only, with no floor to cross (its extreme emissions: "
    "test_extreme_emissions_stay_finite_and_exact and catalogue/test_bad_crf.py)",
)
@pytest.mark.parametrize("way", ["steps", "tree"])
def test_likelihood_is_exact_on_both_sides_of_the_scaled_recursions_floor(monkeypatch, way):
    """On TensorFlow and PyTorch the likelihood's recursions run on exps scaled each step, and fall
    back to log space for the whole batch when a state drops below ``_FLOOR`` (an underflow could have
    lost terms that matter); the tree (PyTorch up to ``_TREE_LOG_Z_UP_TO`` tags) scales each product and
    falls back to the steps. Emission scales from 1 to 1000, with and without BMES rules: every
    log-likelihood and gradient equals float64 dynamic programming, ordinary scales run scaled (or on
    the tree), the extreme ones fall back."""
    import crf.layers as layers

    monkeypatch.setattr(layers, "_TREE_LOG_Z_UP_TO", 10**9 if way == "tree" else 0)

    k, steps = 4, 23
    rng = np.random.default_rng(11)
    lengths = [23, 1, 9, 16, 17, 5]
    mask = np.zeros((len(lengths), steps), bool)
    for b, n in enumerate(lengths):
        mask[b, np.sort(rng.choice(steps, n, replace=False)) if b % 2 else slice(0, n)] = True
    fallbacks = []
    fallback = "_relative_nll" if way == "tree" else "_log_space"
    real_fallback = getattr(layers, fallback)
    monkeypatch.setattr(layers, fallback, lambda *a: fallbacks.append(1) or real_fallback(*a))
    ran = {}
    for scheme in (None, "bmes"):
        constraints = allowed_transitions("bmes", "sbme") if scheme else {}
        crf = make_crf(k, True, seed=12, **constraints)
        for scale in (1, 4, 16, 64, 1000):
            emissions = (rng.normal(size=(len(lengths), steps, k)) * scale).astype("float32")
            tags, ll, d_e, d_t, _, _ = dp_expectations(emissions, mask, *constrained_weights(crf, constraints))
            fallbacks.clear()
            got = np_(crf.log_likelihood(emissions, tags, mask))
            np.testing.assert_allclose(got, ll, atol=1e-3 * max(1, scale / 16), rtol=1e-5)
            got_e = grad(lambda x: crf.log_likelihood(x, tags, mask), emissions)
            np.testing.assert_allclose(got_e, d_e, atol=1e-4)

            def ll_of_transitions(t):
                with keras.StatelessScope(state_mapping=[(crf.transitions, t)]):
                    return crf.log_likelihood(emissions, tags, mask)

            np.testing.assert_allclose(grad(ll_of_transitions, np_(crf.transitions)), d_t, atol=2e-3)
            ran[scheme, scale] = bool(fallbacks)
    assert not ran[None, 1] and not ran["bmes", 1] and not ran[None, 4], ran
    assert ran[None, 1000] and ran["bmes", 1000], ran


@pytest.mark.layers
@pytest.mark.parametrize("way", ["steps", "tree"])
def test_a_path_that_underflowed_early_and_wins_late_is_not_lost(monkeypatch, way):
    """Two tags that never switch. Tag 1 starts 120 below tag 0 (e^-120 is 0 in float32), then tag 0
    scores -60 twice: log Z = log(2) - 120, the two paths tie. The scaled recursion (or the tree)
    drops tag 1 at step 0, and the largest entries of the later states stay above 1e-27; the floor on
    each entry that could be above 0 sends the batch to log space (from the tree: to the steps, then
    log space). Control: with the floor at 0 the answer is off by log 2."""
    import crf.layers as layers

    monkeypatch.setattr(layers, "_TREE_LOG_Z_UP_TO", 10**9 if way == "tree" else 0)
    crf = CRF(2, boundary=True, allowed=np.eye(2, dtype=bool))
    crf.build((None, None, 2))
    for w in crf.weights:
        w.assign(np.zeros(w.shape, "float32"))
    emissions = np.array([[[0.0, -120.0], [-60.0, 0.0], [-60.0, 0.0]]], "float32")
    tags = np.array([[1, 1, 1]])
    expected = -np.log(2.0)  # path 1 1 1 scores -120, as 0 0 0 does
    np.testing.assert_allclose(np_(crf.log_likelihood(emissions, tags)), [expected], atol=1e-5)
    d_e = np.zeros((1, 3, 2))
    d_e[0, :, 1], d_e[0, :, 0] = 0.5, -0.5
    np.testing.assert_allclose(grad(lambda e: crf.log_likelihood(e, tags), emissions), d_e, atol=1e-5)
    monkeypatch.setattr(layers, "_FLOOR", 0.0)
    unguarded = np_(crf.log_likelihood(emissions, tags))
    if BACKEND != "jax":  # (JAX never runs the scaled recursions)
        assert abs(unguarded[0] - expected) > 0.5, unguarded


@pytest.mark.layers
@pytest.mark.skipif(BACKEND == "jax", reason="JAX runs the log-space recursions only (no scaled state to divide)")
@pytest.mark.parametrize("masking", ["product", "where"])
@pytest.mark.parametrize("side", ["forward", "backward"])
def test_a_state_that_can_go_nowhere_stays_zero_on_padding(monkeypatch, side, masking):
    """Forward: tag 2 may not be followed by any tag, and a row's last real step allows only tag 2
    (the other tags' emissions are -inf there): on the padding after it the scaled forward state has
    no entry above 0. Backward: only tag 2 may end a row and no tag may move into it, so only rows of
    one step have a path; the backward recursion starts at the end of the padding from the end
    scores, and its first step already has no entry above 0. Divided by its sum plus ``_TINY``
    each such state stays 0 (not 0 / 0), so the batch needs no log-space fallback, and the
    likelihood and its gradient equal float64 dynamic programming; with the backward recursion's
    padding held by arithmetic (``_MASK_BY_PRODUCT``, PyTorch's way) and by ``where`` (TensorFlow's),
    on both backends. Controls: with ``_TINY`` at 0 the NaN on that padding reaches the gradient and
    the batch falls back, except for the backward state held by ``where``, which never selects it."""
    import crf.layers as layers

    monkeypatch.setattr(layers, "_TREE_LOG_Z_UP_TO", 0)
    monkeypatch.setattr(layers, "_MASK_BY_PRODUCT", masking == "product")
    allowed = np.ones((3, 3), bool)
    rng = np.random.default_rng(6)
    if side == "forward":
        allowed[2] = False
        rules = {"allowed": allowed, "allowed_start": [True] * 3, "allowed_end": [True] * 3}
        emissions = rng.normal(size=(2, 6, 3)).astype("float32")
        mask = np.array([[True] * 4 + [False] * 2, [True] * 6])
        emissions[0, 3, :2] = -np.inf
    else:
        allowed[:, 2] = False
        rules = {"allowed": allowed, "allowed_start": [True] * 3, "allowed_end": [False, False, True]}
        emissions = rng.normal(size=(2, 5, 3)).astype("float32")
        mask = np.array([[True] + [False] * 4] * 2)
    crf = make_crf(3, True, seed=5, **rules)
    tags, ll, d_e, *_ = dp_expectations(emissions, mask, *constrained_weights(crf, rules))
    assert np.all(np.isfinite(ll))  # every row has a path
    fallbacks = []
    real_log_space = layers._log_space
    monkeypatch.setattr(layers, "_log_space", lambda *a: fallbacks.append(1) or real_log_space(*a))

    def check():
        fallbacks.clear()
        np.testing.assert_allclose(np_(crf.log_likelihood(emissions, tags, mask)), ll, atol=1e-5)
        got = grad(lambda e: crf.log_likelihood(e, tags, mask), emissions)
        np.testing.assert_allclose(np.where(mask[:, :, None], got, 0.0), d_e, atol=1e-5)
        return bool(fallbacks)

    assert not check()
    monkeypatch.setattr(layers, "_TINY", 0.0)
    assert check() == (side == "forward" or masking == "product")


@pytest.mark.layers
@pytest.mark.skipif(BACKEND == "jax", reason="JAX's likelihood differentiates its own log-space scan; no tree")
def test_the_tree_falls_back_where_a_product_or_a_row_underflowed(monkeypatch):
    """Two cases a review found, where the tree's exps underflow without any entry of the first
    step's scores or of a scaled product being below ``_FLOOR``: (a) two 2-tag halves whose large
    entries do not line up, so their product's entries fall below it before it is scaled back to a
    maximum of 1; (b) a row whose only path starts 66 below its best start tag and ends through a -66
    emission, so its final sum is 0 in float32. Each must fall back to the steps and equal float64
    dynamic programming (its gradient too in (a)); control: with the floor at 0 the tree's answer is
    wrong (by 0.33 in (a), +inf instead of 0 in (b))."""
    import crf.layers as layers

    monkeypatch.setattr(layers, "_TREE_LOG_Z_UP_TO", 10**9)
    fallbacks = []
    real_nll = layers._relative_nll
    monkeypatch.setattr(layers, "_relative_nll", lambda *a: fallbacks.append(1) or real_nll(*a))
    a = CRF(2, boundary=True)
    a.build((None, None, 2))
    a.transitions.assign(np.array([[-42.0, -5.0], [0.0, -5.0]], "float32"))
    a.start_transitions.assign(np.array([0.0, -66.0], "float32"))
    a.end_transitions.assign(np.array([-66.0, 0.0], "float32"))
    rules = {"allowed": np.diag([False, True, True]), "allowed_start": [True, True, False], "allowed_end": [True] * 3}
    b = CRF(3, boundary=True, **rules)
    b.build((None, None, 3))
    for w in b.weights:
        w.assign(np.zeros(w.shape, "float32"))
    cases = [
        (a, np.array([[[0.0, 0.0], [0.0, -40.0], [0.0, -56.0]]], "float32"), {}),
        (b, np.array([[[66.0, 0.0, 0.0], [0.0, -66.0, 0.0]]], "float32"), rules),
    ]
    for crf, emissions, constraints in cases:
        mask = np.ones(emissions.shape[:2], bool)
        tags, ll, d_e, *_ = dp_expectations(emissions, mask, *constrained_weights(crf, constraints))
        fallbacks.clear()
        np.testing.assert_allclose(np_(crf.log_likelihood(emissions, tags)), ll, atol=1e-4)
        assert fallbacks, crf.num_tags
        np.testing.assert_allclose(grad(lambda e: crf.log_likelihood(e, tags), emissions), d_e, atol=1e-4)
        floor = layers._FLOOR
        monkeypatch.setattr(layers, "_FLOOR", 0.0)
        unguarded = np_(crf.log_likelihood(emissions, tags))
        monkeypatch.setattr(layers, "_FLOOR", floor)
        assert not np.abs(unguarded - ll).max() < 0.3, (crf.num_tags, unguarded, ll)


# ---- numerics ---------------------------------------------------------------------------------------


@pytest.mark.layers
def test_extreme_emissions_stay_finite_and_exact():
    """Emissions of +-1e4: no overflow; the best path takes every +1e4 and its log-probability is ~0."""
    crf = make_crf(4)
    emissions = np.full((2, 6, 4), -1e4, "float32")
    gold = np.array([[0, 1, 2, 3, 0, 1], [3, 3, 2, 2, 1, 1]])
    np.put_along_axis(emissions, gold[..., None], 1e4, axis=2)
    ll = np_(crf.log_likelihood(emissions, gold))
    # Path scores are ~6e4, where float32's spacing is 0.004: log p = 0 up to that rounding.
    assert np.all(np.isfinite(ll)) and np.all(np.abs(ll) <= 0.01)
    np.testing.assert_array_equal(np_(crf.decode(emissions)[0]), gold)
    g = grad(lambda e: crf.log_likelihood(e, gold), emissions)
    assert np.all(np.isfinite(g)) and np.all(np.abs(g) < 1e-3)
    assert np.all(np.isfinite(np_(crf.marginals(emissions))))


@pytest.mark.layers
@pytest.mark.parametrize(
    "way",
    ["every-tag", "path-only", "batch-minor", "tree", "path-only, rescaled every 16", "batch-minor, rescaled every 16"],
)
def test_emissions_of_1e30_decode_the_float64_best_path(monkeypatch, way):
    """The README's Numerics claim, on every way of decoding (``_best_path``'s switches, as in
    ``test_every_way_of_finding_the_best_path_matches_dynamic_programming``; "rescaled every 16" is
    PyTorch's ``_RESCALE_EVERY``, run on every backend): emissions of magnitude up to 1e30 over rows
    of up to 40 steps, under BMES (4 tags) and BIO (9 tags) rules, with right padding and holes,
    decode the paths and scores of float64 dynamic programming (the transitions, about 1, are below
    float32's spacing there: the paths follow the emissions and the rules). It checks the rules and
    the padding at that scale; the renormalising is ``test_the_viterbi_state_stays_near_zero_and_exact``'s
    (a max-plus sum over 40 steps of 1e30 would not overflow float32 without it)."""
    use_decoding_way(monkeypatch, way)
    rng = np.random.default_rng(5)
    mask = right_and_scattered([40, 1, 17, 39, 33, 40], 40, rng)
    for k, constraints in ((4, allowed_transitions("bmes", "sbme")), (9, BIO9)):
        crf = make_crf(k, True, seed=4, **constraints)
        emissions = rng.normal(size=mask.shape + (k,))
        emissions = (emissions / np.abs(emissions).max() * 1e30).astype("float32")
        *_, paths, best = dp_expectations(emissions, mask, *constrained_weights(crf, constraints))
        decoded, scores = map(np_, crf.decode(emissions, mask))
        assert np.all(np.isfinite(scores))
        assert_decodes_like(decoded, scores, mask, paths, best, context=(way, k))


@pytest.mark.layers
@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="only TensorFlow traces with the number of steps unknown (JAX's jit and PyTorch know it)",
)
def test_rescaling_every_few_steps_falls_back_to_the_scan_when_the_steps_are_unknown(monkeypatch):
    """``_viterbi_states`` rescaled every 16 steps loops in Python over the steps, which a graph
    traced with T unknown cannot: it then scans, rescaling every step, and decodes the paths of
    float64 dynamic programming. The spy on ``_scan`` is the control: with T known the forward
    recursion loops in Python (one scan, the backtrack's), with T unknown it scans too (two)."""
    import tensorflow as tf

    import crf.layers as layers

    monkeypatch.setattr(layers, "_RESCALE_EVERY", 16)
    scans, scan = [], layers._scan
    monkeypatch.setattr(layers, "_scan", lambda *a, **kw: scans.append(1) or scan(*a, **kw))
    rng = np.random.default_rng(6)
    mask = right_and_scattered([40, 1, 17, 39], 40, rng)
    crf = make_crf(4, True, seed=4)
    emissions = rng.normal(size=mask.shape + (4,)).astype("float32")
    *_, paths, best = dp_expectations(emissions, mask, *constrained_weights(crf, {}))
    for steps, expected_scans in ((None, 2), (40, 1)):
        scans.clear()
        spec = [tf.TensorSpec([None, steps, 4], tf.float32), tf.TensorSpec([None, steps], tf.bool)]
        decode = tf.function(lambda e, m: crf.decode(e, m), input_signature=spec)
        decoded, scores = map(np_, decode(emissions, mask))
        assert len(scans) == expected_scans, (steps, len(scans))
        assert_decodes_like(decoded, scores, mask, paths, best, context=(steps,))


@pytest.mark.layers
def test_all_masked_rows_and_length_one():
    crf = make_crf(3)
    emissions = np.random.default_rng(0).normal(size=(2, 1, 3)).astype("float32")
    mask = np.array([[True], [False]])
    ll = np_(crf.log_likelihood(emissions, np.array([[2], [0]]), mask))
    trans, start, end = weights(crf)
    o = Oracle(emissions[0].astype(np.float64), [0], trans, start, end)
    np.testing.assert_allclose(ll, [o.score([2]) - o.log_z, 0.0], atol=TOL)
    g = grad(lambda e: crf.log_likelihood(e, np.array([[2], [0]]), mask), emissions)
    assert np.all(np.isfinite(g)) and np.all(g[1] == 0)
    tags, scores = map(np_, crf.decode(emissions, mask))
    assert tags.tolist() == [[int(np.argmax(start + emissions[0, 0] + end))], [-1]] and scores[1] == 0
    np.testing.assert_allclose(np_(crf.marginals(emissions, mask))[1], 0)


@pytest.mark.layers
def test_float16_emissions():
    crf = make_crf(4)
    emissions = np.random.default_rng(0).normal(size=(2, 5, 4)).astype("float16") * 100
    tags = np.random.default_rng(1).integers(0, 4, (2, 5))
    ll16 = np_(crf.log_likelihood(emissions, tags))
    ll32 = np_(crf.log_likelihood(emissions.astype("float32"), tags))
    assert ll16.dtype == np.float32 and np.all(np.isfinite(ll16))
    np.testing.assert_allclose(ll16, ll32, rtol=1e-6)
    assert np.all(np.isfinite(grad(lambda e: crf.log_likelihood(e, tags), emissions)))


# ---- constraints ------------------------------------------------------------------------------------


def test_allowed_transitions_for_the_three_schemes():
    bmes = allowed_transitions("bmes", "sbme")  # the article's ids: s=0 b=1 m=2 e=3
    assert bmes["allowed"].astype(int).tolist() == [[1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0]]
    assert bmes["allowed_start"].tolist() == [True, True, False, False]  # s, b
    assert bmes["allowed_end"].tolist() == [True, False, False, True]  # s, e
    bio = allowed_transitions("bio", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    assert bio["allowed"][:, 2].tolist() == [False, True, True, False, False]  # I-PER after B-PER / I-PER
    assert bio["allowed"][:, 1].all() and bio["allowed_start"].tolist() == [True, True, False, True, False]
    assert bio["allowed_end"].all()
    bioes = allowed_transitions("bioes", ["O", "B-X", "I-X", "E-X", "S-X"])
    assert bioes["allowed"].astype(int).tolist() == [
        [1, 1, 0, 0, 1],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 0],
        [1, 1, 0, 0, 1],
        [1, 1, 0, 0, 1],
    ]
    assert bioes["allowed_start"].tolist() == [True, True, False, False, True]
    assert bioes["allowed_end"].tolist() == [True, False, False, True, True]


def test_constraint_errors_name_the_problem():
    with pytest.raises(ValueError, match="bmes needs the four tags"):
        allowed_transitions("bmes", "sbmx")
    untyped = allowed_transitions("bio", ["O", "B", "I"])
    assert untyped["allowed"].astype(int).tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 1]]
    with pytest.raises(ValueError, match="'X-PER' is not a BIO tag"):
        allowed_transitions("bio", ["O", "X-PER"])
    with pytest.raises(ValueError, match="scheme must be"):
        allowed_transitions("iob2", ["O"])
    with pytest.raises(ValueError, match=r"allowed must be a boolean array of shape \(3, 3\)"):
        CRF(3, allowed=np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="allowed_start forbids everything"):
        CRF(3, allowed_start=[False, False, False])
    with pytest.raises(ValueError, match="num_tags must be a positive integer"):
        CRF(0)
    with pytest.raises(ValueError, match=r"emissions must have shape \(batch, T, 5\) \(num_tags=4 \+ 1 padding tag\)"):
        CRF(4, ignore_last_label=True).build((None, 7, 4))


@pytest.mark.layers
def test_decoding_never_returns_a_forbidden_path():
    """Emissions that favour forbidden BMES moves (m first, s -> e): the decoded paths stay legal."""
    crf = make_crf(4, **allowed_transitions("bmes", "sbme"))
    emissions = np.zeros((1, 4, 4), "float32")
    emissions[0, :, 2] = 5.0  # "m m m m" would win without constraints
    tags, _ = map(np_, crf.decode(emissions, top_k=5))
    rules = allowed_transitions("bmes", "sbme")
    for path in tags[0]:
        assert rules["allowed_start"][path[0]] and rules["allowed_end"][path[-1]]
        assert all(rules["allowed"][a, b] for a, b in zip(path, path[1:]))


# ---- Keras integration: masks, training, saving ----------------------------------------------------


def tagger(k=4, vocab=12, **crf_kwargs):
    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(vocab, 16, mask_zero=True)(tokens)
    x = keras.layers.Dense(k)(x)
    crf = CRF(k, **crf_kwargs)
    model = keras.Model(tokens, crf(x))
    return model, crf, keras.Model(tokens, crf(x, decode=True))


def toy_data(n=256, t=8, seed=0):
    """Token ids 1..9 with tag = id % 3, except that the tag after a 1 is always 3, whatever the token:
    a per-token classifier cannot learn that, a CRF's transitions can. Rows are right- or left-padded
    with 0."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 10, size=(n, t))
    y = x % 3
    for i in range(1, t):
        y[:, i] = np.where(y[:, i - 1] == 1, 3, y[:, i])
    lengths = rng.integers(2, t + 1, size=n)
    for i, n_real in enumerate(lengths):
        if i % 2:
            x[i, n_real:] = 0
            y[i, n_real:] = 0
        else:
            x[i, : t - n_real] = 0
            y[i, : t - n_real] = 0
    return x.astype("int32"), y.astype("int32")


@pytest.mark.layers
def test_keras_mask_from_embedding_is_picked_up():
    model, crf, decoder = tagger()
    x, y = toy_data(6)
    out = np_(model(x))
    assert np.all(np.isneginf(out[x == 0])) and np.all(np.isfinite(out[x != 0]))
    emissions = out.copy()
    emissions[x == 0] = 0
    np.testing.assert_allclose(np_(crf.loss(y, out)), -np_(crf.log_likelihood(emissions, y, x != 0)), rtol=1e-5)
    tags = np_(decoder(x))
    np.testing.assert_array_equal(tags, np_(crf.decode(emissions, x != 0)[0]))
    assert np.all(tags[x == 0] == -1)


@pytest.mark.layers
def test_fit_learns_the_toy_tagging_task():
    model, crf, decoder = tagger()
    x, y = toy_data()
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=crf.loss, metrics=[crf.accuracy])
    before = np_(crf.transitions).copy()
    history = model.fit(x, y, batch_size=32, epochs=8, verbose=0).history
    assert history["loss"][-1] < history["loss"][0] / 4
    assert not np.allclose(np_(crf.transitions), before)  # the loss trains the layer's own weights
    tags = np_(decoder(x))
    assert np.mean(tags[x != 0] == y[x != 0]) > 0.97
    after_one = np.zeros_like(x, bool)
    after_one[:, 1:] = (y[:, :-1] == 1) & (x[:, :-1] != 0)
    assert np.mean(tags[after_one & (x != 0)] == 3) > 0.97  # learnt from the transitions


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="jit_compile=True is the TensorFlow/XLA check (JAX always compiles)"
)
def test_fit_and_decode_under_xla_jit_compile():
    """Under XLA: the log-likelihood and decodes (the best path both ways, and the 2 best) still match
    the oracles, and a BMES model trains on legal gold paths (each real stretch segmented into words)
    with a falling, finite loss."""
    import tensorflow as tf

    import crf.layers as layers

    # The single best path both ways (pointers for every tag below _PATH_ONLY_FROM tags, the argmax along
    # the path from it), right- and left-padded: what float64 dynamic programming gives.
    for k, constraints in ((4, {}), (9, BIO9)):
        crf = make_crf(k, True, seed=8, **constraints)
        for padding in ("right", "left"):
            mask = np.repeat(MASKS[padding][:3], 3, axis=0)
            emissions = (np.random.default_rng(k).normal(size=(*mask.shape, k)) * 2).astype("float32")
            *_, paths, best = dp_expectations(emissions, mask, *constrained_weights(crf, constraints))
            decoded, scores = map(np_, tf.function(lambda e: crf.decode(e, mask), jit_compile=True)(emissions))
            assert [decoded[b, mask[b]].tolist() for b in range(len(mask))] == paths
            np.testing.assert_allclose(scores, best, atol=1e-3, rtol=1e-5)
    assert layers._PATH_ONLY_FROM == 8  # so the 9-tag case took the path-only way

    crf, emissions, mask, oracles = case(4, True, "bmes", "left")
    ll = tf.function(lambda e: crf.log_likelihood(e, np.zeros(mask.shape, "int32"), mask), jit_compile=True)
    best = tf.function(lambda e: crf.decode(e, mask, top_k=2), jit_compile=True)
    tags, scores = map(np_, best(emissions))
    for b, o in enumerate(oracles):
        if len(o.positions):
            paths, top = o.best(2)
            assert tuple(tags[b, 0, o.positions]) == paths[0]
            np.testing.assert_allclose(scores[b, : len(top)], top, atol=TOL)
    assert np.all(np.isfinite(np_(ll(emissions))))

    model, crf, decoder = tagger(**allowed_transitions("bmes", "sbme"))
    x, _ = toy_data(128)
    rng = np.random.default_rng(0)
    y = np.zeros_like(x)
    for i, row in enumerate(x):
        real = np.flatnonzero(row)
        words, left = [], len(real)
        while left:
            words.append(min(left, int(rng.integers(1, 4))))
            left -= words[-1]
        y[i, real] = word_tags(["x" * n for n in words])
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=crf.loss, metrics=[crf.accuracy], jit_compile=True)
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0).history
    assert np.all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0] < 1e3
    decoder.compile(jit_compile=True)
    tags = decoder.predict(x, batch_size=32, verbose=0)
    assert tags.shape == x.shape and np.all(tags[x == 0] == -1)


@pytest.mark.layers
def test_article_compatibility_mode_one_hot_with_padding_tag():
    """The article's setup: Dense(K + 1), one-hot labels over K + 1 tags whose last one marks padding."""
    keras.utils.set_random_seed(0)  # the initialisation must not depend on which tests ran before
    k = 4
    x, y = toy_data(128)
    one_hot = np.eye(k + 1, dtype="float32")[np.where(x == 0, k, y)]
    tokens = keras.Input((None,), dtype="int32")
    emissions = keras.layers.Dense(k + 1)(keras.layers.Embedding(12, 16)(tokens))  # no mask, as in the article
    crf = CRF(k, boundary=False, ignore_last_label=True)
    model = keras.Model(tokens, crf(emissions))
    scores = np_(model(x[:8]))
    np.testing.assert_allclose(
        np_(crf.loss(one_hot[:8], scores)), -np_(crf.log_likelihood(scores[..., :k], y[:8], x[:8] != 0)), rtol=1e-5
    )
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=crf.loss, metrics=[crf.accuracy])
    history = model.fit(x, one_hot, batch_size=32, epochs=8, verbose=0).history
    assert history["loss"][-1] < history["loss"][0] / 3
    tags = np_(crf.decode(model.predict(x, verbose=0), mask=x != 0)[0])  # the K + 1 channels are sliced
    assert np.mean(tags[x != 0] == y[x != 0]) > 0.95


@pytest.mark.layers
def test_keras_save_load_round_trip_gives_identical_decodes(tmp_path):
    model, crf, decoder = tagger(**allowed_transitions("bmes", "sbme"))
    x, _ = toy_data(64)
    y = np.maximum(np_(decoder(x)), 0)  # labels the BMES rules allow (toy_data's break them)
    model.compile(optimizer="adam", loss=crf.loss)
    model.fit(x, y, epochs=1, verbose=0)
    decoder.save(tmp_path / "tagger.keras")
    loaded = keras.saving.load_model(tmp_path / "tagger.keras")
    np.testing.assert_array_equal(np_(loaded(x)), np_(decoder(x)))
    crf2 = [layer for layer in loaded.layers if isinstance(layer, CRF)][0]
    assert crf2.get_config() == crf.get_config()
    np.testing.assert_array_equal(np_(crf2.transitions), np_(crf.transitions))
    # The training model: its loss is a bound method, so it loads with compile=False and is compiled
    # again with the loaded layer's loss (documented in crf/README.md).
    model.save(tmp_path / "model.keras")
    again = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    crf3 = again.get_layer(crf.name)
    again.compile(optimizer="adam", loss=crf3.loss)
    np.testing.assert_array_equal(np_(again(x)), np_(model(x)))
    assert np.isfinite(again.evaluate(x, y, verbose=0))
    np.testing.assert_array_equal(np_(build_tagger(again)(x)), np_(decoder(x)))  # left padding too
    # A CRF given the token ids as its mask (the layers in between drop Keras masks):
    tokens = keras.Input((None,), dtype="int32")
    crf4 = CRF(4)
    by_ids = keras.Model(
        tokens, crf4(keras.layers.Conv1D(4, 3, padding="same")(keras.layers.Embedding(12, 8)(tokens)), mask=tokens)
    )
    by_ids.save(tmp_path / "by_ids.keras")
    rebuilt = build_tagger(keras.saving.load_model(tmp_path / "by_ids.keras", compile=False))
    np.testing.assert_array_equal(
        np_(rebuilt(x)), np_(keras.Model(tokens, crf4(by_ids.layers[-2].output, mask=tokens, decode=True))(x))
    )
    assert np.all(np_(rebuilt(x))[x == 0] == -1)


@pytest.mark.layers
def test_the_readme_use_and_reload_code_runs_as_pasted_with_layers_py_alone(tmp_path):
    """crf/README.md's "Use the layer" code, then its "Save and reload" code, in an empty folder beside
    a copy of layers.py alone: the reloaded model trains, and its rebuilt tagger (and that tagger saved
    and loaded) decodes exactly as the original tagger did."""
    readme = (REPO / "crf" / "README.md").read_text(encoding="utf-8")
    use = readme.split("## Use the layer", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    reload = readme.split("### Save and reload", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    checks = textwrap.dedent("""
        x_ids[:, 15:] = 0  # some padding
        assert np.array_equal(tagger.predict(x_ids, verbose=0), before)
        assert np.array_equal(keras.saving.load_model("tagger.keras").predict(x_ids, verbose=0), before)
        print("loss", model.fit(x_ids, y_tags, epochs=1, verbose=0).history["loss"][0])
    """)
    script = use + "x_ids[:, 15:] = 0\nbefore = tagger.predict(x_ids, verbose=0)\n" + reload + checks
    last = run_copied_alone(REPO / "crf" / "layers.py", script, tmp_path)
    assert last.startswith("loss ") and np.isfinite(float(last.split()[1])), last


def test_layers_file_is_copyable_alone(tmp_path):
    script = textwrap.dedent("""
        import numpy as np, layers
        crf = layers.CRF(4, **layers.allowed_transitions("bmes", "sbme"))
        tags, _ = crf.decode(np.zeros((1, 3, 4), "float32"))
        print(np.asarray(tags).tolist())
    """)
    tags = ast.literal_eval(run_copied_alone(REPO / "crf" / "layers.py", script, tmp_path))[0]
    rules = allowed_transitions("bmes", "sbme")
    assert rules["allowed_start"][tags[0]] and rules["allowed_end"][tags[-1]]


# ---- the word segmentation application (crf/segment.py, crf/scoring.py, crf/train.py) --------------


def test_sbme_tags_round_trip():
    words = ["迈向", "充满", "希望", "的", "新", "世纪", "一九九八年"]
    tags = word_tags(words)
    assert tags[:7] == [1, 3, 1, 3, 1, 3, 0] and tags[-5:] == [1, 2, 2, 2, 3]
    assert tags_to_words("".join(words), tags) == words
    # Any tag sequence gives words that cover the text: a stray m or e still closes or opens sensibly.
    assert tags_to_words("abcd", [2, 2, 0, 3]) == ["ab", "c", "d"]
    assert tags_to_words("", []) == []


@pytest.mark.data
def test_segmenter_rules_keep_the_gold_segmentation(require_data):
    """Gold tags through the segmenter's rules give back the gold words (F1 > 0.999): the rules cost
    nothing on the PKU test set, digits included (2001年 is one word there)."""
    require_data("icwb2/gold/pku_test_gold.utf8")
    from utils import data

    gold = data.icwb2("pku", "gold")
    again = [apply_rules("".join(words), word_tags(words)) for words in gold]
    assert bakeoff_score(gold, again, set())["f1"] > 0.999
    assert apply_rules("我用Keras3和2001年 的 x", word_tags(["我", "用", "Keras3", "和", "2001年", "的", "x"])) == [
        "我",
        "用",
        "Keras3",
        "和",
        "2001年",
        "的",
        "x",
    ]
    assert apply_rules("ab3 cd", [1, 2, 3, 1, 3]) == ["ab3", "cd"]  # the space cuts, the run holds
    assert apply_rules("ab3", [0, 0, 0]) == ["ab3"]
    assert normalize("2001年 A-b") == "２００１年 Ａ－ｂ"


def test_encoder_gives_what_features_gives():
    """The segmenter's NumPy ``Encoder`` against ``features`` (dictionary lookups per character), on
    random texts: known, unknown and ASCII characters (read as full width), code points above and
    below the table's, a lone surrogate, empty texts, a longer padded length; with and without
    bigrams (a text's last character pairs with </s>)."""
    rng = np.random.default_rng(0)
    sentences = [list("我爱北京天安门") + ["２００１年", "Ａ"], list("中国人民ｘ") + ["😀"]] * 2
    alphabet = list("我爱北京天安门中国人民從未年ｘ") + ["2", "0", "A", "x", " ", "😀", "\udcff", "\x00", "~", "\x7f"]
    alphabet += ["\U0001f64f", "\U0010fffd"]  # above the table's highest code point (😀)
    texts = ["".join(rng.choice(alphabet, n)) for n in rng.integers(0, 12, 40)] + ["", "京", "ｘ"]
    for with_bigrams in (False, True):
        vocab = build_vocab(sentences, min_count=1, with_bigrams=with_bigrams)
        assert with_bigrams == any(b.endswith("</s>") for b in vocab["bigrams"] or [])
        encoder = Encoder(vocab)
        for batch, length in ((texts, None), (texts[:5], 30), ([""], None), ([], None)):
            want, got = features(batch, vocab, length=length), encoder(batch, length)
            want, got = (want, got) if with_bigrams else ([want], [got])
            assert len(got) == len(want)
            for w, g in zip(want, got):
                assert g.dtype == w.dtype and g.shape == w.shape
                np.testing.assert_array_equal(g, w)
        with pytest.raises(ValueError, match="'ab' is not one character; build the vocabulary with build_vocab"):
            Encoder({"chars": {"ab": 2}, "bigrams": None})
        # the texts reach every case: unknown characters (id 1), and ASCII read as its full-width form
        chars = features(texts, vocab)[0] if with_bigrams else features(texts, vocab)
        assert np.any(chars == 1) and encode("A", vocab) == [vocab["chars"]["Ａ"]]


def test_batch_word_starts_and_rules_match_the_tag_by_tag_ones():
    """``_word_starts`` (a batch of tags at once) gives ``_tag_starts`` of each row; the rules with
    the fast path (a line without spaces or ASCII runs) cut as the general path does."""
    rng = np.random.default_rng(0)
    tags = rng.integers(0, 4, (50, 20))
    lengths = rng.integers(0, 21, 50)
    for starts, row, n in zip(_word_starts(tags, lengths), tags, lengths):
        assert starts == sorted(s for s in _tag_starts(row[:n].tolist()) if s < n)
    alphabet = list("我爱北京天安门") + [" ", "a", "3", ".", "Ｋ"]
    for _ in range(300):
        line = "".join(rng.choice(alphabet, rng.integers(1, 15)))
        text = "".join(line.split())
        t = rng.integers(0, 4, len(text)).tolist()
        general = _cut_reference(line, t)
        assert _apply_rules(line, text, _word_starts(np.array([t]), [len(t)])[0]) == general
        assert apply_rules(line, t) == general


def _cut_reference(line, tags):
    """The rules written out the slow way (the segmenter's code before its fast path)."""
    import re

    starts = {0} | {i for i, t in enumerate(tags) if t in (0, 1)} | {i + 1 for i, t in enumerate(tags) if t in (0, 3)}
    offset = 0
    for part in line.split():
        starts.add(offset)
        for run in re.finditer(r"[A-Za-z0-9]+(?:[.'_-][A-Za-z0-9]+)*", part):
            starts -= set(range(offset + run.start() + 1, offset + run.end()))
        offset += len(part)
    text = "".join(line.split())
    cuts = sorted(s for s in starts if 0 <= s < len(text)) + [len(text)]
    return [text[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


def test_bakeoff_score_by_hand():
    gold = [["中国", "人民", "站", "起来", "了"], ["你好"]]
    pred = [["中国人民", "站", "起", "来", "了"], ["你好"]]
    s = bakeoff_score(gold, pred, training_words={"中国", "人民", "了", "你好"})
    # correct: 站, 了, 你好 = 3; gold words 6, predicted 6; OOV gold words: 站, 起来 (1 of 2 right)
    assert (s["precision"], s["recall"]) == (3 / 6, 3 / 6) and s["f1"] == pytest.approx(0.5)
    assert s["oov_rate"] == 2 / 6 and s["oov_recall"] == 0.5 and s["iv_recall"] == 2 / 4
    assert spans(["ab", "c"]) == [(0, 2), (2, 3)]
    with pytest.raises(ValueError, match="changed the text at gold line 1, predicted line 1"):
        bakeoff_score([["ab"]], [["ac"]], set())
    with pytest.raises(ValueError, match="at gold line 2, predicted line 2 \\('d' vs 'x'\\)"):
        bakeoff_score([["ab", "c"], ["d"]], [["a", "bc"], ["x"]], set())
    # Line ends may differ (the MSR gold moves some opening quotes to the line before): spans count
    # over the whole text, so the quote cut off as in the gold is right.
    moved = bakeoff_score([["他", "说", "“"], ["好", "”"]], [["他", "说"], ["“", "好", "”"]], set())
    assert moved["f1"] == 1.0
    with pytest.raises(ValueError, match="1 gold lines but 2 predicted"):
        bakeoff_score([["a"]], [["a"], ["b"]], set())


def test_word_set_score_is_the_articles_metric():
    # Sets per sentence: repeated words count once, positions are ignored.
    assert word_set_score([["的", "的", "人"]], [["的", "人的"]]) == 1 / 2
    assert word_set_score([["中国", "人"]], [["中国", "人"]]) == 1.0


def test_vocabulary_keeps_characters_seen_twice():
    vocab = build_vocab([["中国", "人"], ["人", "民"], ["中"]], min_count=2)
    assert vocab == {
        "chars": {"中": 2, "人": 3},
        "bigrams": None,
    }  # by frequency then character; 0 = padding, 1 = unknown
    with_pairs = build_vocab([["中国", "人"], ["中国"]], min_count=2, with_bigrams=True)
    assert with_pairs["bigrams"] == {"中国": 2}  # 国人 and 人</s> and 国</s> are seen once
    assert bigrams("中国人") == ["中国", "国人", "人</s>"]


def random_weights(model, scale=0.3, seed=0):
    """Set every weight of ``model`` to ``scale`` x N(0, 1), drawn from ``seed`` and the weight's path
    (the same values for the same model whatever the order or backend)."""
    for w in model.weights:
        w.assign(
            scale * np.random.default_rng(seed + zlib.crc32(w.path.encode())).normal(size=w.shape).astype("float32")
        )


def tiny_segmenter(variant="bmes"):
    from crf.train import VARIANTS, build_model

    vocab = build_vocab([list("我爱北京天安门") * 2], min_count=2, with_bigrams=VARIANTS[variant]["bigrams"])
    _, _, tagger = build_model(vocab, variant)
    return Segmenter(tagger, vocab)


@pytest.mark.layers
@pytest.mark.parametrize("variant", ["bmes", "strong"])
def test_segmenter_rules_spaces_latin_empty_unknown(variant):
    seg = tiny_segmenter(variant)
    lines = ["我爱北京天安门", "", "   ", "我 爱Keras3和Python 3.11！", "從未見過的字"]
    out = seg.cut_lines(lines, batch_size=2)
    assert [len(w) for w in out[1:3]] == [0, 0]  # empty and blank lines stay empty
    for line, words in zip(lines, out):
        assert "".join(words) == "".join(line.split())  # no character lost or added
    for run in ("Keras3", "Python", "3.11"):  # no cut inside an ASCII run (its edges are the model's)
        assert any(run in word for word in out[3])
    assert out[3][0] == "我"  # a space is a boundary
    assert not any(" " in w for words in out for w in words)
    assert seg.cut("我爱北京天安门") == out[0]


@pytest.mark.layers
def test_segmenter_save_load_and_cli(tmp_path, monkeypatch, capsys):
    seg = tiny_segmenter("strong")
    seg.save(tmp_path / "model")
    loaded = Segmenter.load(tmp_path / "model")
    assert loaded.crf is not None and seg.crf is not None  # both decode on the host
    lines = ["我爱北京天安门", "北京我爱", "天安门abc"]
    assert loaded.cut_lines(lines) == seg.cut_lines(lines)
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = "\n".join(" ".join(w) for w in seg.cut_lines(lines)) + "\n"
    # once as the command a user types (its own process, the text on stdin) ...
    done = subprocess.run(
        [sys.executable, str(REPO / "crf" / "segment.py"), str(tmp_path / "model")],
        env={**os.environ, "KERAS_BACKEND": BACKEND},
        input="\n".join(lines),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout == expected, done.stderr[-2000:]

    # ... then each way in and each refusal through its main() here (a process costs a Keras import)
    def run(*argv, stdin=b""):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
        capsys.readouterr()
        try:
            segment.main([str(a) for a in argv])
            code = 0
        except SystemExit as stop:
            code = stop.code
        out, err = capsys.readouterr()
        return code, out, err

    model = tmp_path / "model"
    assert run(model, "--input", tmp_path / "in.txt") == (0, expected, "")
    assert run(model, stdin="\n".join(lines).encode()) == (0, expected, "")
    assert run(model, *lines) == (0, expected, "")
    assert run(model, "--input", tmp_path / "in.txt", "--ensemble", model) == (0, expected, "")
    code, out, err = run(tmp_path / "nowhere", "我")
    assert code == 2 and "tagger.keras not found" in err
    assert run(model, stdin=b"") == (0, "", "")  # nothing in, nothing out
    (tmp_path / "bad.txt").write_bytes("北京\n".encode() + "天".encode("gbk") + b"\n")
    code, _, err = run(model, "--input", tmp_path / "bad.txt")
    assert code == 2 and "bad.txt:2: not valid UTF-8" in err
    code, out, _ = run(model, stdin="北京\x0c天安门\n我".encode())  # a form feed is not a line end
    assert code == 0 and out.count("\n") == 2


PKU_PARTS = (
    "training/pku_training.utf8",
    "testing/pku_test.utf8",
    "gold/pku_test_gold.utf8",
    "gold/pku_training_words.utf8",
)


@pytest.mark.data
@pytest.mark.skipif(BACKEND != "tensorflow", reason="the training script's learning; checked once")
def test_train_quick_epoch_learns_and_saves_a_segmenter(tmp_path, require_data):
    """One quick-mode epoch of the article's recipe learns (F1 far above an 'every character a word'
    baseline), records jieba on the same text, and saves a segmenter that loads."""
    for part in PKU_PARTS:
        require_data(f"icwb2/{part}")
    from crf import train

    records = train.main(
        [
            "--quick",
            "--epochs",
            "1",
            "--heldout",
            "300",
            "--out",
            str(tmp_path / "results"),
            "--save",
            str(tmp_path / "runs"),
        ]
    )
    jieba, crf = records
    assert crf["experiment"] == "article-pku-quick" and crf["metrics"]["test_f1"] > 0.7
    assert 0 < crf["metrics"]["test_oov_recall"] <= 1 and crf["metrics"]["heldout_word_set"] > 0.7
    assert jieba["experiment"] == "jieba-pku-quick" and 0.80 < jieba["metrics"]["f1"] < 0.84  # 0.818 measured here
    seg = Segmenter.load(tmp_path / "runs" / "article-pku-quick-seed0")
    assert "".join(seg.cut("迈向充满希望的新世纪")) == "迈向充满希望的新世纪"


@pytest.mark.data
@pytest.mark.backends
def test_smoke_run_resumes_a_killed_seed_exactly(tmp_path, require_data, capsys, kill_after_epoch):
    """The script end to end on the current backend (smoke: 5 steps an epoch, 2 epochs, the BMES
    variant: its CRF has start/end scores to restore too). A seed killed after its first epoch
    resumes at the second with the same batches, weights and optimizer state: its history and test
    scores equal those of the run that was never killed."""
    for part in PKU_PARTS:
        require_data(f"icwb2/{part}")
    from crf import train

    argv = ["--smoke", "--epochs", "2", "--variant", "bmes", "--save", str(tmp_path / "models")]
    records = check_smoke_run(train, argv[1:], tmp_path, capsys, ["jieba-pku-smoke", "bmes-pku-smoke"])
    whole = next(r for r in records if r["experiment"] == "bmes-pku-smoke")
    kill_after_epoch(1)
    with pytest.raises(Killed):
        train.main([*argv, "--out", str(tmp_path / "killed")])
    capsys.readouterr()
    _, resumed = train.main([*argv, "--out", str(tmp_path / "killed")])
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert resumed["history"]["loss"] == whole["history"]["loss"] and len(whole["history"]["loss"]) == 2
    for key in ("test_f1", "test_oov_recall", "heldout_f1"):
        assert resumed["metrics"][key] == whole["metrics"][key], key


@pytest.mark.data
@pytest.mark.skipif(BACKEND != "tensorflow", reason="MirroredStrategy; checked once")
def test_distribute_trains_the_crf_under_the_strategy(tmp_path, require_data):
    """--distribute builds and trains the CRF model under tf.distribute.MirroredStrategy (two logical
    CPUs here), in its own process: splitting the CPU must precede TensorFlow's start."""
    for part in PKU_PARTS:
        require_data(f"icwb2/{part}")
    done = subprocess.run(
        [
            sys.executable,
            "crf/train.py",
            "--smoke",
            "--distribute",
            "--cpu-devices",
            "2",
            "--out",
            str(tmp_path / "r"),
            "--save",
            str(tmp_path / "m"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MirroredStrategy over 2 devices" in done.stdout
    record = runs_load(tmp_path / "r" / "crf" / "article-pku-smoke" / "seed0.json")
    assert record["config"]["distribute"] is True and record["metrics"]["test_f1"] > 0


@pytest.mark.data
@pytest.mark.skipif(BACKEND != "tensorflow", reason="the training script end to end; checked once")
def test_train_runs_on_msr(tmp_path, require_data, monkeypatch):
    """MSR's training file is not on the project's machines; a stand-in made here (the first 400
    gold test sentences, written to a temporary data folder, never kept) checks the MSR path of
    train.py end to end: reading, training, scoring on the official MSR test set and gold."""
    parts = {"testing/msr_test.utf8": None, "gold/msr_test_gold.utf8": None, "gold/msr_training_words.utf8": None}
    for part in parts:
        parts[part] = require_data(f"icwb2/{part}")
    root = tmp_path / "data"
    for part, path in parts.items():
        (root / "icwb2" / part).parent.mkdir(parents=True, exist_ok=True)
        (root / "icwb2" / part).symlink_to(path)
    gold = parts["gold/msr_test_gold.utf8"].read_text(encoding="utf-8").splitlines()[:400]
    (root / "icwb2" / "training").mkdir()
    (root / "icwb2" / "training" / "msr_training.utf8").write_text("\n".join(gold) + "\n", encoding="utf-8")
    monkeypatch.setenv("KEXUE_DATA", str(root))
    from crf import train

    records = train.main(
        [
            "--corpus",
            "msr",
            "--quick",
            "--epochs",
            "1",
            "--heldout",
            "50",
            "--out",
            str(tmp_path / "results"),
            "--save",
            str(tmp_path / "runs"),
        ]
    )
    metrics = records[1]["metrics"]
    assert records[1]["experiment"] == "article-msr-quick" and records[1]["config"]["corpus"] == "msr"
    assert 0.3 < metrics["test_f1"] <= 1 and 0 <= metrics["test_oov_recall"] <= 1
    jieba = runs_load(tmp_path / "results" / "crf" / "jieba-msr-quick" / "seed0.json")
    assert 0.7 < jieba["metrics"]["f1"] < 0.9  # jieba on the MSR test set, same scorer


@pytest.mark.data
@pytest.mark.skipif(BACKEND != "tensorflow", reason="the evaluation script end to end; checked once")
def test_evaluate_scores_a_model_and_an_ensemble(tmp_path, require_data):
    for part in (
        "testing/pku_test.utf8",
        "gold/pku_test_gold.utf8",
        "gold/pku_training_words.utf8",
        "training/pku_training.utf8",
    ):
        require_data(f"icwb2/{part}")
    from crf import evaluate

    tiny_segmenter("bmes").save(tmp_path / "a")
    tiny_segmenter("strong").save(tmp_path / "b")
    alone = evaluate.main([str(tmp_path / "a")])
    both = evaluate.main(
        [str(tmp_path / "a"), str(tmp_path / "b"), "--name", "pair", "--out", str(tmp_path / "results")]
    )
    assert 0 <= alone["f1"] <= 1 and 0 <= both["f1"] <= 1 and alone["gold_words"] == both["gold_words"] == 104372
    record = runs_load(tmp_path / "results" / "crf" / "pair-pku" / "seed0.json")
    assert record["config"]["models"] == ["a", "b"] and record["metrics"]["test_f1"] == both["f1"]
    with pytest.raises(SystemExit):
        evaluate.main([str(tmp_path / "nowhere")])


def runs_load(path):
    from utils import runs

    return runs.load_result(path)


@pytest.mark.layers
@pytest.mark.parametrize(
    "variant", ["article", "bmes", "strong", "strong_bd", "fast", "fast_e32", "fast_tiny", "fast_lstm"]
)
def test_every_variant_trains_on_generated_batches(variant):
    """Each model variant fits a few steps from the article-style batch generator (synthetic
    sentences) and its loss goes down."""
    from crf import train

    rng = np.random.default_rng(0)
    lexicon = ["中国", "人民", "的", "天安门", "我", "爱", "北京", "新", "世纪"]
    sentences = [[lexicon[i] for i in rng.integers(0, len(lexicon), rng.integers(2, 9))] for _ in range(256)]
    vocab = build_vocab(sentences, with_bigrams=train.VARIANTS[variant]["bigrams"])
    keras.utils.set_random_seed(0)
    model, crf, tagger = train.build_model(vocab, variant)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=crf.loss, metrics=[crf.accuracy])
    history = model.fit(train.batches(sentences, vocab), steps_per_epoch=4, epochs=3, shuffle=False, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    seg = Segmenter(tagger, vocab)
    assert seg.cut_lines(["中国人民爱北京"])[0] and "".join(seg.cut("我爱北京天安门")) == "我爱北京天安门"


def train_job(variant, *argv, corpus_data=None):
    """The job crf/train.py's command line ``--variant VARIANT ARGV`` makes for that variant (seed 0)."""
    from crf import train
    from utils import cli

    args = cli.parse(train.parser(), ["--variant", variant, *argv])
    return [j for j in train.jobs(args, corpus_data) if j.config.get("variant") == variant][0]


def train_seed_until_optimizer(monkeypatch, job):
    """Run crf/train.py's ``train_seed`` on ``job`` until it asks for its optimizer (the model is built by
    then), stop it there, and return the arguments it passed to ``optimizer``."""
    from crf import train

    class Built(Exception):
        pass

    def spy(*args):
        seen.append(args)
        raise Built

    seen = []
    monkeypatch.setattr(train, "optimizer", spy)
    with pytest.raises(Built):
        train.train_seed(job, types.SimpleNamespace(monitor=None, patience=None))
    return seen[0]


def test_held_out_checks_split_each_epoch_into_shorter_ones():
    """A variant with ``checks`` runs the same steps as shorter epochs (a held-out check and an
    average written into the weights after each), in every mode and with ``--epochs``; others keep
    the mode's epochs."""
    from crf import train

    def config(variant, *argv):
        job = train_job(variant, *argv)
        return job.config["epochs"], job.config["steps_per_epoch"], job.protocol

    assert train.VARIANTS["fast_fine"]["checks"] == 5
    assert config("fast_fine")[:2] == (50, 100) and config("fast")[:2] == (10, 500)
    assert config("fast_fine", "--quick")[:2] == (10, 30) and config("fast", "--quick")[:2] == (2, 150)
    assert config("fast_fine", "--smoke")[:2] == (5, 1)
    assert config("fast_fine", "--epochs", "3")[:2] == (15, 100)
    assert config("fast_fine")[2].startswith("full: 50 x 100 steps")


def test_refits_train_every_sentence_for_the_epochs_held_out_text_chose():
    """A refit variant holds nothing out, has no early stopping and caps the mode's epochs at its own
    (quick and smoke modes keep their shorter runs and their held-out sentences; ``--epochs`` wins);
    everything else is the variant it refits. The cap must not touch other variants."""
    from crf import train

    rest = lambda variant: {k: v for k, v in variant.items() if k not in train.REFIT}
    for name in ("fast", "fast_deep", "fast_small"):
        refit, original = train.VARIANTS[f"{name}_refit"], train.VARIANTS[name]
        assert rest(refit) == rest(original) and {k: refit[k] for k in train.REFIT} == train.REFIT
    job = train_job("fast_refit")
    assert (job.config["epochs"], job.config["steps_per_epoch"], job.config["heldout"]) == (1, 500, 0)
    assert job.config["early_stopping"] is None and job.protocol.startswith("full: 1 x 500 steps")
    assert "0 held out" in job.protocol
    assert train_job("fast").config["epochs"] == 10 and train_job("fast").config["heldout"] == 1000
    quick = train_job("fast_refit", "--quick").config
    assert (quick["epochs"], quick["heldout"]) == (1, 1000)
    assert train_job("fast_refit", "--epochs", "3").config["epochs"] == 3


def test_decay_variants_fall_to_zero_over_the_steps_they_run(monkeypatch):
    """``decay``: Adam's rate starts at its default 0.001 and falls along a cosine to zero at the run's last
    step (the variant's capped epochs x the mode's steps, or ``--epochs``), with the moving average kept;
    a variant without it keeps the constant 0.001 (and ``"adam"`` without ``ema``)."""
    from crf import train

    def run(variant, *argv):
        config = train_job(variant, *argv).config
        return config, train.optimizer(train.VARIANTS[variant], config["steps_per_epoch"], config["epochs"])

    def rate(opt, step):  # the schedule the optimizer saves, at that step
        schedule = keras.optimizers.schedules.deserialize(opt.get_config()["learning_rate"])
        return float(keras.ops.convert_to_numpy(schedule(step)))

    for variant, argv, steps in [
        ("fast_deep_cos", [], 500),
        ("fast_deep_cos2", [], 1000),
        ("fast_deep_cos2", ["--quick"], 300),
        ("fast_deep_cos2", ["--epochs", "3"], 1500),
    ]:
        config, opt = run(variant, *argv)
        assert config["epochs"] * config["steps_per_epoch"] == steps and opt.use_ema and opt.ema_momentum == 0.99
        assert rate(opt, 0) == pytest.approx(0.001) and rate(opt, steps // 2) == pytest.approx(0.0005, rel=1e-3)
        assert rate(opt, steps) == pytest.approx(0.0, abs=1e-9) and rate(opt, steps - 1) > 0
    config, opt = run("fast_deep")
    assert float(keras.ops.convert_to_numpy(opt.learning_rate)) == pytest.approx(0.001) and opt.use_ema
    assert train.optimizer(train.VARIANTS["article"], 500, 10) == "adam"
    alone = train.optimizer({**train.VARIANTS["article"], "decay": "cosine"}, 100, 2)  # no moving average
    assert not alone.use_ema and rate(alone, 100) == pytest.approx(0.0005, rel=1e-3)
    with pytest.raises(ValueError, match="decay 'linear'"):
        train.optimizer({**train.VARIANTS["fast"], "decay": "linear"}, 100, 2)
    assert train.optimizer({**train.VARIANTS["fast"], "decay": None}, 100, 2).use_ema  # None: no decay

    # train_seed passes the run's own steps and epochs (the variant's 2 x 500), not the mode's 10 epochs
    sentences = [["中国", "人民"], ["我", "爱", "北京"]] * 20
    job = train_job("fast_deep_cos2", "--heldout", "5", corpus_data=(sentences, [], [], set()))
    variant, steps_per_epoch, epochs = train_seed_until_optimizer(monkeypatch, job)
    assert (variant["decay"], steps_per_epoch, epochs) == ("cosine", 500, 2)


@pytest.mark.layers
def test_pretrained_embeddings_put_characters_of_the_same_contexts_together():
    """``pretrain_embeddings`` on raw text where 金 and 木 always sit between 甲 and 乙, 水 and 火 between 丙
    and 丁: 金's vector ends near 木's and away from 水's, and the bigram 金乙 near 木乙 and further from 水丁
    (whose neighbour before differs; both end a sentence). Both tables have a row per vocabulary id and the spread of
    Keras's default initialisation. (Control, checked by hand: with ``epochs=0`` the vectors stay at
    their random start and the similarity assertions fail.)"""
    from crf import train

    sentences = [["甲", x, "乙"] for x in "金木"] * 60 + [["丙", z, "丁"] for z in "水火"] * 60
    vocab = build_vocab(sentences, with_bigrams=True)
    keras.utils.set_random_seed(0)
    chars, pairs = train.pretrain_embeddings(sentences, vocab, 16, epochs=20, batch_size=64, contexts=8)
    assert chars.shape == (len(vocab["chars"]) + 2, 16) and pairs.shape == (len(vocab["bigrams"]) + 2, 16)
    spread = 0.05 / np.sqrt(3)  # of uniform(-0.05, 0.05), Keras's default for embeddings
    assert chars.std() == pytest.approx(spread, rel=1e-4) and pairs.std() == pytest.approx(spread, rel=1e-4)

    def cos(table, ids, a, b):
        u, v = table[ids[a]], table[ids[b]]
        return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))

    c, b = vocab["chars"], vocab["bigrams"]
    assert cos(chars, c, "金", "木") > 0.8 and cos(chars, c, "水", "火") > 0.8 and cos(chars, c, "金", "水") < 0.3
    assert cos(pairs, b, "金乙", "木乙") > 0.8 and cos(pairs, b, "金乙", "水丁") < 0.5  # both end sentences
    with pytest.raises(ValueError, match="no bigrams"):
        train.pretrain_embeddings(sentences, build_vocab(sentences), 16)


def test_skipgram_examples_pair_each_character_and_bigram_with_its_neighbours():
    """The pretraining's examples for 甲金乙水 (丙 rare: one class with every id from ``contexts`` - 1 up):
    a character's targets are the characters just before and after it, the bigram at i's those just
    before i and just after i + 1, and 0 outside the sentence."""
    from crf import train

    sentences = [["甲金乙水"], ["丙"]] + [["甲金乙水"]] * 3
    vocab = build_vocab(sentences, min_count=1, with_bigrams=True)
    chars, pairs, targets = train.skipgram_examples(sentences[:2], vocab, contexts=6)
    ids = {u: vocab["chars"][u] for u in "甲金乙水丙"}
    assert ids["丙"] == 6 and max(ids[u] for u in "甲金乙水") == 5  # the rarest, first past the classes
    jia, jin, yi, shui = (ids[u] for u in "甲金乙水")
    assert chars.tolist() == [jia, jin, yi, shui, 6]
    assert pairs.tolist() == [vocab["bigrams"][b] for b in ("甲金", "金乙", "乙水", "水</s>", "丙</s>")]
    before, after, before_pair, after_pair = (t.tolist() for t in targets)
    assert before == [0, jia, jin, yi, 0] and after == [jin, yi, shui, 0, 0]
    assert before_pair == [0, jia, jin, yi, 0] and after_pair == [yi, shui, 0, 0, 0]
    assert train.skipgram_examples(sentences[1:2], vocab, contexts=5)[2][0].tolist() == [0]  # 丙 alone
    capped = [min(i, 4) for i in (jin, yi, shui)] + [0]  # contexts 5: ids 4 and 5 both class 4
    assert 4 in capped and train.skipgram_examples(sentences[:1], vocab, contexts=5)[2][1].tolist() == capped


def test_a_pretraining_variant_starts_from_embeddings_pretrained_on_its_training_sentences(monkeypatch):
    """``pretrain`` in a variant: train_seed pretrains on the sentences it trains on (never the held-out
    ones) with the variant's width and passes, and the model's embeddings start from those tables;
    a variant without it does not pretrain."""
    from crf import train

    def pretrain(sentences, vocab, size, epochs):
        calls.append((sentences, size, epochs))
        rows = (len(vocab["chars"]) + 2, len(vocab["bigrams"]) + 2)
        return [np.full((n, size), k + 1, "float32") for k, n in enumerate(rows)]

    def build(vocab, variant):
        built.append(real_build(vocab, variant))
        return built[-1]

    calls, built, real_build = [], [], train.build_model
    lexicon = ["中国", "人民", "我", "爱", "北京", "新", "世纪", "天安门"]
    sentences = [[lexicon[i % 8], lexicon[i // 8 % 8], lexicon[i // 64]] for i in range(40)]  # 40 different
    monkeypatch.setattr(train, "pretrain_embeddings", pretrain)
    monkeypatch.setattr(train, "build_model", build)
    for variant in ("fast_pre", "fast"):
        train_seed_until_optimizer(
            monkeypatch, train_job(variant, "--heldout", "5", corpus_data=(sentences, [], [], set()))
        )
    ((seen, size, epochs),) = calls  # only fast_pre pretrains
    fit, heldout = train.split(sentences, 0, 5)
    assert seen == fit and len(seen) == 35 and size == 64 and epochs == 1
    assert not {tuple(s) for s in seen} & {tuple(s) for s in heldout}
    trained, _, tagger = built[0]
    for model in (trained, tagger):  # the training model, and the tagger (what the scores use)
        assert np.all(keras.ops.convert_to_numpy(model.get_layer("embedding").embeddings) == 1)
        assert np.all(keras.ops.convert_to_numpy(model.get_layer("bigram_embedding").embeddings) == 2)
    assert not np.all(keras.ops.convert_to_numpy(built[1][0].get_layer("embedding").embeddings) == 1)


def test_a_latest_variant_holds_out_the_end_of_the_training_file(monkeypatch):
    """``heldout_latest``: the held-out sentences are the last of the file, in its order, for every
    seed, and the rest is shuffled by the seed; train_seed trains on exactly that rest. fast_latest
    holds out 2000 in full mode; fast's split is the article's random one."""
    from crf import train

    sentences = [[f"{i:02d}"] for i in range(40)]
    fit, heldout = train.split(sentences, 0, 5, latest=True)
    assert heldout == sentences[35:] and sorted(fit) == sentences[:35] and fit != sentences[:35]
    other_fit, other_heldout = train.split(sentences, 1, 5, latest=True)
    assert other_heldout == heldout and other_fit != fit and sorted(other_fit) == sentences[:35]

    def vocab_of(sentences, **kwargs):
        seen.append(sentences)
        return real_vocab(sentences, **kwargs)

    seen, real_vocab = [], train.build_vocab
    monkeypatch.setattr(train, "build_vocab", vocab_of)
    for variant in ("fast_latest", "fast"):
        job = train_job(variant, "--heldout", "5", corpus_data=(sentences, [], [], set()))
        train_seed_until_optimizer(monkeypatch, job)
    assert seen[0] == fit  # fast_latest, seed 0
    assert sorted(seen[1]) != sentences[:35] and seen[1] == train.split(sentences, 0, 5)[0]  # fast
    config = train_job("fast_latest").config
    assert (config["heldout"], config["heldout_latest"], config["dilations"]) == (2000, True, [1, 2, 1])
    assert train_job("fast_deep_latest").config["dilations"] == [1, 2, 4, 1]


def test_the_summary_marks_numbers_a_run_does_not_make(capsys):
    """train.py's closing table: a held-out score of a refit (which holds nothing out) and jieba's
    training numbers are "-", not "diverged" (what utils.runs prints for NaN, stored as null)."""
    from crf import train

    def record(experiment, **metrics):
        return {"experiment": experiment, "metrics": metrics}

    train.summary(
        [
            record("jieba-pku", f1=0.8183, precision=0.85, recall=0.79, oov_recall=0.58, iv_recall=0.8),
            record("fast_refit-pku", test_f1=0.9485, heldout_word_set=None, epoch_time_s=100.0),
            record("fast_refit-pku", test_f1=0.9491, heldout_word_set=None, epoch_time_s=110.0),
            record("fast-pku", test_f1=0.9489, heldout_word_set=0.968),
        ]
    )
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["fast_refit-pku"][2] == "0.9488 ± 0.0004" and rows["fast_refit-pku"][7:9] == ["-", "105 ± 7"]
    assert rows["jieba-pku"][2] == "0.8183" and rows["jieba-pku"][7:9] == ["-", "-"]
    assert rows["fast-pku"][7] == "0.9680" and "diverged" not in str(rows)


@pytest.mark.data
@pytest.mark.skipif(BACKEND != "tensorflow", reason="the training script end to end; checked once")
def test_a_refit_trains_on_every_sentence_and_scores_its_last_epoch(tmp_path, require_data, capsys):
    """A refit's run (smoke steps, nothing held out as in the full protocol): every training sentence
    is trained on, no held-out score is made up, and the last epoch's weights are the ones scored."""
    for part in PKU_PARTS:
        require_data(f"icwb2/{part}")
    from crf import train

    argv = ["--smoke", "--variant", "fast_refit", "--heldout", "0", "--epochs", "2"]
    _, record = train.main([*argv, "--out", str(tmp_path / "r"), "--save", str(tmp_path / "m")])
    lines = len(train.data.icwb2("pku", "train"))
    assert f"{lines} training sentences, 0 held out" in capsys.readouterr().out
    metrics = record["metrics"]
    assert record["config"]["heldout"] == 0 and metrics["heldout_f1"] is None and metrics["heldout_word_set"] is None
    assert (metrics["epochs_trained"], metrics["scored_epoch"]) == (2, 2) and 0 < metrics["test_f1"] <= 1
    # the model folder says what it trained on: every training sentence
    saved = json.loads((tmp_path / "m" / "fast_refit-pku-smoke-seed0" / train.TRAINED_ON).read_text())
    assert saved == train.trained_on(train.data.icwb2("pku", "train"))


@pytest.mark.data
@pytest.mark.skipif(BACKEND != "tensorflow", reason="the training script end to end; checked once")
def test_a_swap_run_says_it_trained_on_its_split_and_swapped_copies(tmp_path, require_data, capsys):
    """A ``fast_deep_swap`` run (smoke steps) trains on its split and one swapped copy of each sentence,
    and its model folder's ``trained_on.json`` names the split's sentences and the copies' rate (what
    a student taught by it compares); a stale file from an earlier run in that folder is replaced."""
    for part in PKU_PARTS:
        require_data(f"icwb2/{part}")
    from crf import train

    folder = tmp_path / "m" / "fast_deep_swap-pku-smoke-seed0"
    folder.mkdir(parents=True)
    (folder / train.TRAINED_ON).write_text('{"sentences": 1}')
    train.main(["--smoke", "--variant", "fast_deep_swap", "--out", str(tmp_path / "r"), "--save", str(tmp_path / "m")])
    fit = train.split(train.data.icwb2("pku", "train"), 0, 100)[0]
    assert f"{2 * len(fit)} training sentences, 100 held out" in capsys.readouterr().out
    saved = json.loads((folder / train.TRAINED_ON).read_text())
    assert saved == {**train.trained_on(fit), "swapped_copies": 0.1}


@pytest.mark.layers
def test_ema_variant_ends_each_epoch_on_the_moving_average_of_its_weights():
    """``strong_ema``'s optimizer: the weights a run ends an epoch with are the moving average
    ``a = m a + (1 - m) w`` of the weights plain Adam reaches after each step (a NumPy oracle on the
    same batches from the same start); mid-epoch the weights are Adam's own."""
    from crf import train

    rng = np.random.default_rng(1)
    lexicon = ["中国", "人民", "的", "天安门", "我", "爱", "北京"]
    sentences = [[lexicon[i] for i in rng.integers(0, len(lexicon), rng.integers(2, 7))] for _ in range(64)]
    vocab = build_vocab(sentences, with_bigrams=True)
    variant, steps = train.VARIANTS["strong_ema"], 3

    def weights_after_each_step(optimizer):
        keras.utils.set_random_seed(0)
        model, crf, _ = train.build_model(vocab, "strong_ema")
        model.compile(optimizer=optimizer, loss=crf.loss)
        seen, data = [], train.batches(sentences, vocab)
        for _ in range(steps):
            model.train_on_batch(*next(data))
            seen.append([np.array(w, dtype="float64") for w in model.trainable_weights])
        return seen

    plain = weights_after_each_step(keras.optimizers.Adam())
    averaged = weights_after_each_step(train.optimizer(variant, steps, 1))
    assert train.optimizer(train.VARIANTS["strong"], steps, 1) == "adam"
    momentum = variant["ema"]
    average = plain[0]
    for w in plain[1:]:
        average = [momentum * a + (1 - momentum) * x for a, x in zip(average, w)]
    for got, step_weights in zip(averaged[:-1], plain[:-1]):  # within the epoch: Adam's own weights
        for g, w in zip(got, step_weights):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    moved = 0
    for g, a, w in zip(averaged[-1], average, plain[-1]):
        np.testing.assert_allclose(g, a, rtol=1e-5, atol=1e-6)
        moved += not np.allclose(a, w, rtol=1e-5, atol=1e-6)
    assert moved  # control: the average differs from the last step's weights, so the check can fail


@pytest.mark.layers
@pytest.mark.parametrize("variant", ["article", "bmes"])
def test_packed_batches_train_exactly_as_padded_ones(variant):
    """The article's network on packed batches (``pack``, ``packed_model``) computes what it computes
    on the padded batch: the emissions at every real step (random weights, a nonzero padding
    embedding), the loss, and the weights after a training step. Rows of every kind: the longest
    (no padding after it), 1-3 padding steps short of it, much shorter, one character. Controls:
    without the zeroed steps, or with too few padding ids kept, the emissions differ."""
    from crf import train

    assert variant in train.PACKED
    lengths = [40, 39, 38, 37, 36, 20, 20, 7, 3, 1, 1, 12]
    rng = np.random.default_rng(0)
    chars = np.zeros((len(lengths), max(lengths)), dtype="int32")
    for row, n in enumerate(lengths):
        chars[row, :n] = rng.integers(1, 30, n)
    tags = np.zeros_like(chars)  # tags of a random segmentation: paths the BMES rules allow (finite loss)
    for row, n in enumerate(lengths):
        sizes = []
        while sum(sizes) < n:
            sizes.append(int(min(rng.integers(1, 5), n - sum(sizes))))
        tags[row, :n] = word_tags(["x" * k for k in sizes])
    packed, keep, index = train.pack(chars)
    assert packed.shape[0] < len(lengths) and packed.shape[1] == chars.shape[1] + 1
    real = chars != 0
    assert np.array_equal(packed.reshape(-1)[index][real], chars[real]) and np.all(index[~real] == 0)
    assert len(set(index[real].tolist())) == real.sum()

    def built():
        keras.utils.set_random_seed(0)
        vocab = {"chars": {chr(0x4E00 + i): i for i in range(2, 30)}, "bigrams": None}
        model, crf, _ = train.build_model(vocab, variant)
        random_weights(model)
        return model, crf

    model, crf = built()
    packed_net = train.packed_model(model, crf, variant)
    assert [w.path for w in packed_net.weights] == [w.path for w in model.weights]  # checkpoints line up
    emissions = keras.Model(model.inputs, model.get_layer("emissions").output)
    padded = np_(emissions(chars))

    def packed_emissions(packed_, keep_, index_):
        return np_(train.packed_emissions(model, variant)([packed_, keep_, index_]))

    np.testing.assert_allclose(packed_emissions(packed, keep, index)[real], padded[real], rtol=1e-5, atol=1e-5)
    unkept = packed_emissions(packed, np.ones_like(keep), index)
    assert not np.allclose(unkept[real], padded[real], atol=1e-3)  # control: the zeroed steps are needed
    too_short = packed_emissions(*train.pack(chars, reach=2))
    assert not np.allclose(too_short[real], padded[real], atol=1e-3)  # control: 3 padding ids are needed
    # Rows rounded up to a multiple of 8 (as on JAX: few shapes): empty rows that no step reads.
    packed8, keep8, index8 = train.pack(chars, row_step=8)
    assert packed8.shape[0] == 8 and np.array_equal(index8, index)
    assert np.array_equal(packed8[: len(packed)], packed) and np.array_equal(keep8[: len(keep)], keep)
    assert not packed8[len(packed) :].any() and not keep8[len(keep) :].any()
    np.testing.assert_allclose(packed_emissions(packed8, keep8, index8)[real], padded[real], rtol=1e-5, atol=1e-5)

    def net(packed_input, learning_rate):
        model, crf = built()
        net = train.packed_model(model, crf, variant) if packed_input else model
        net.compile(optimizer=keras.optimizers.SGD(learning_rate), loss=crf.loss)
        return net, model

    def one_step(packed_input):
        trained, model = net(packed_input, 0.1)
        loss = float(trained.train_on_batch([chars, packed, keep, index] if packed_input else chars, tags))
        return loss, [np_(w) for w in model.weights]

    def epoch_loss(packed_input):  # two batches that pack differently: 12 rows into fewer, 4 into 4
        feed = [(chars, tags), (chars[:4, :40], tags[:4, :40])]
        feed = list(train.packed_batches(feed)) if packed_input else feed
        fit = net(packed_input, 0.0)[0].fit((b for b in feed), steps_per_epoch=2, epochs=1, shuffle=False, verbose=0)
        return fit.history["loss"][0]

    # Keras weighs each batch's loss by the first input's rows: the batch's sentences, not the packed rows
    padded_epoch = epoch_loss(False)
    assert np.isfinite(padded_epoch) and epoch_loss(True) == pytest.approx(padded_epoch, rel=1e-5)
    (loss_padded, after_padded), (loss_packed, after_packed) = one_step(False), one_step(True)
    assert np.isfinite(loss_padded) and loss_packed == pytest.approx(loss_padded, rel=1e-5)
    for a, b in zip(after_padded, after_packed):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="characters then padding"):
        train.pack(np.array([[3, 0, 4]]))
    with pytest.raises(ValueError, match="strong variant is not the article's plain network"):
        train.packed_model(model, crf, "strong")


@pytest.mark.layers
def test_zero_masked_makes_same_convolutions_blind_to_padding():
    """Zeroing padded steps before each 'same' convolution: a sentence's outputs at its real steps
    are those it gets alone, however much padding its batch adds (without, they differ)."""
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(20, 8, embeddings_initializer="normal")(ids)
    conv1, conv2 = (
        keras.layers.Conv1D(8, 3, padding="same", activation="relu"),
        keras.layers.Conv1D(8, 3, padding="same"),
    )
    blind = keras.Model(ids, conv2(ZeroMasked()(conv1(ZeroMasked()(embedded, mask=ids)), mask=ids)))
    plain = keras.Model(ids, conv2(conv1(embedded)))
    alone = np.array([[5, 6, 7, 8]], "int32")
    padded = np.array([[5, 6, 7, 8, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7]], "int32")
    np.testing.assert_allclose(np_(blind(padded))[0, :4], np_(blind(alone))[0], atol=1e-6)
    assert not np.allclose(np_(plain(padded))[0, :4], np_(plain(alone))[0], atol=1e-3)
    # A boolean mask, and the Keras mask of Embedding(mask_zero=True), do the same.
    x = np.random.default_rng(0).normal(size=(2, 7, 3)).astype("float32")
    out = np_(ZeroMasked()(x, mask=padded > 0))
    assert np.all(out[0, 4:] == 0) and np.array_equal(out[0, :4], x[0, :4]) and np.array_equal(out[1], x[1])
    with pytest.raises(
        ValueError,
        match=r"ZeroMasked: inputs must be \(batch, T, d\) and the mask \(batch, T\), the same batch and T, "
        r"got \(2, 7, 3\)",
    ):
        ZeroMasked()(x, mask=padded[:, :, None])
    masked = keras.Model(ids, ZeroMasked()(keras.layers.Embedding(20, 3, mask_zero=True)(ids)))
    assert np.all(np_(masked(padded))[0, 4:] == 0) and np.all(np_(masked(padded))[0, :4] != 0)


@pytest.mark.layers
def test_lstm_variant_sees_the_whole_sentence_and_not_its_padding(tmp_path):
    """fast_lstm's emissions at a sentence's last character change with its first character, 19
    characters away (fast's convolutions see 4 each side, so its last emissions do not), and a
    sentence's emissions are those it gets alone, in a batch with a longer one (the LSTM reads the ids'
    mask; run without it, the backward pass starts in the padding and they differ). Saved and
    loaded, the segmenter gives the same emissions."""
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list("我爱北京天安门"), 20))
    other = "门" + text[1:]
    assert other != text
    last = {}
    for variant in ("fast", "fast_lstm"):
        seg = tiny_segmenter(variant)
        # random weights, biases too: at Keras's zero biases, zero padding is a fixed point of the LSTM
        # (its state stays 0), so the padding's effect would not show
        random_weights(seg.tagger, scale=0.1)
        out = seg._emission_scores([text, other], 20)
        last[variant] = np.abs(out[0, -1] - out[1, -1]).max()
    # fast: 0 (its rows are computed apart); fast_lstm: 3.6e-4 on TensorFlow, JAX and PyTorch (2026-12-02)
    assert last["fast"] < 1e-6 and last["fast_lstm"] > 1e-5, last
    short = text[:12]
    alone = seg._emission_scores([short], 12)[0]
    batched = seg._emission_scores([short, text], 20)[0, :12]
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    # The control: the same LSTM without the mask, on the same inputs, is not blind to the padding.
    bilstm = seg.tagger.get_layer("bilstm")
    features_of = keras.Model(seg.tagger.inputs, bilstm.input[0])  # its inputs: the features, the mask
    padded = np_(bilstm(features_of(seg.encoder([short, text], 20))))[0, :12]
    unpadded = np_(bilstm(features_of(seg.encoder([short], 12))))[0]
    assert not np.allclose(padded, unpadded, atol=1e-3)
    seg.save(tmp_path / "lstm")
    loaded = Segmenter.load(tmp_path / "lstm")
    np.testing.assert_allclose(loaded._emission_scores([short, text], 20), seg._emission_scores([short, text], 20))


@pytest.mark.layers
def test_segmenter_decodes_on_the_host_like_the_tagger():
    """The segmenter runs the network to the CRF's emissions and decodes in NumPy; the tags equal
    the tagger's own in-graph decoding of each text alone, for texts of many lengths batched by
    rows and by size (the strong variant zeroes padding, so batching changes nothing). Each text
    goes to the tagger alone in its row, padded to a multiple of 32 (three shapes to compile, not
    one per length: on JAX each costs seconds)."""
    seg = tiny_segmenter("strong")
    keras.utils.set_random_seed(3)
    random_weights(seg.tagger)  # so the transitions matter
    assert seg.crf is not None
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list("我爱北京天安门中国人民從未")) for _ in range(n)) for n in rng.integers(1, 90, 40)]
    hosted = seg.tag(texts, batch_size=8, max_chars=256)
    for text, tags in zip(texts, hosted):
        alone = features([text], seg.vocab, length=-(-len(text) // 32) * 32)
        x = keras.ops.convert_to_numpy(seg.tagger.predict_on_batch(alone))
        assert tags == x[0, : len(text)].tolist()
    # A tagger that does not end in a CRF is run as it is.
    ids = keras.Input((None,), dtype="int32")
    argmax = keras.Model(ids, keras.ops.argmax(keras.layers.Embedding(len(seg.vocab["chars"]) + 2, 4)(ids), axis=-1))
    other = Segmenter(argmax, {"chars": seg.vocab["chars"], "bigrams": None})
    assert other.crf is None
    assert other.tag(texts[:3]) == [np_(argmax(features([t], other.vocab)))[0].tolist() for t in texts[:3]]


@pytest.mark.layers
def test_ensemble_decodes_the_sum_of_its_members_scores():
    """An ensemble of two models with different vocabularies and weights tags each text as the CRF
    layer decodes the summed emissions under the summed transition, start and end scores."""
    from crf.train import build_model

    members = []
    for seed, text in enumerate(["我爱北京天安门" * 2, "北京天安门中国人民" * 2]):
        vocab = build_vocab([list(text)], min_count=2)
        _, _, tagger = build_model(vocab, "bmes")
        random_weights(tagger, seed=seed)
        members.append(Segmenter(tagger, vocab))
    ensemble = Ensemble(members)
    texts = ["我爱北京", "中国人民爱北京天安门", "從", "天安门中国人民我爱北京天安门中国"]
    summed = sum(np_(m.emissions(features(texts, m.vocab)))[..., :4] for m in members)
    crf = CRF(4, **allowed_transitions("bmes", "sbme"))
    crf.build((None, None, 4))
    for target, parts in zip(
        (crf.transitions, crf.start_transitions, crf.end_transitions),
        zip(*([m.crf.transitions, m.crf.start_transitions, m.crf.end_transitions] for m in members)),
    ):
        target.assign(sum(np_(v) for v in parts))
    lengths = np.array([len(t) for t in texts])
    expected = np_(crf.decode(summed, np.arange(summed.shape[1])[None] < lengths[:, None])[0])
    assert ensemble.tag(texts) == [expected[i, :n].tolist() for i, n in enumerate(lengths)]
    assert Ensemble([members[0], members[0]]).tag(texts) == members[0].tag(texts)  # doubled scores, same paths
    with pytest.raises(ValueError, match="no members"):
        Ensemble([])
    with pytest.raises(ValueError, match="must decode on the host"):
        Ensemble([members[0], Segmenter(members[1].tagger, members[1].vocab, host_decode=False)])
    with pytest.raises(NotImplementedError, match="save each member"):
        ensemble.save("anywhere")


def test_segmenter_batches_respect_both_limits():
    lengths = [1, 3, 5, 30, 31, 40, 70, 500]
    batches = list(segment_batches(list(range(len(lengths))), lengths, batch_size=3, max_chars=128))
    assert [i for b in batches for i in b] == list(range(len(lengths)))  # every text once, in order
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * segment_padded(lengths[b[-1]]) <= 128)
    assert batches[-1] == [7]  # longer than the budget: alone
    with pytest.raises(ValueError, match="batch_size and max_chars must be at least 1, got 0"):
        list(segment_batches([0], [3], batch_size=0, max_chars=128))
    padded = [segment_padded(n) for n in range(1, 5000)]
    assert all(n <= p < 1.25 * n + 8 for n, p in zip(range(1, 5000), padded))  # little padding ...
    assert len(set(padded)) < 60  # ... and few distinct shapes


def test_bucketed_training_batches_cover_each_pass_and_resume():
    """The strong variant's batches: each pass uses every sentence once (over several pools of 50
    batches), batches hold similar lengths, and starting at step s gives exactly the batches a run
    that got there would see."""
    from crf import train

    rng = np.random.default_rng(0)
    lexicon = list("中国人民的天安门我爱北京新世纪")
    sentences = [["".join(rng.choice(lexicon, int(n)))] for n in rng.integers(1, 40, 7000)]
    vocab = build_vocab(sentences)
    n = -(-len(sentences) // train.BATCH_SIZE)
    run = train.batches(sentences, vocab, bucket=True, seed=5)
    seen = [next(run) for _ in range(2 * n + 1)]
    expected = sorted(tuple(encode(s[0], vocab)) for s in sentences)
    for one_pass in (seen[:n], seen[n : 2 * n]):
        rows = sorted(tuple(int(i) for i in row if i) for x, _ in one_pass for row in x)
        assert rows == expected  # every sentence exactly once per pass
    assert [x.shape for x, _ in seen[:n]] != [x.shape for x, _ in seen[n : 2 * n]]  # reshuffled per pass
    padding = lambda batches: sum(x.size for x, _ in batches) / sum((x > 0).sum() for x, _ in batches)
    plain = train.batches(sentences, vocab)
    assert padding(seen[:n]) < 1.1 < 1.5 < padding([next(plain) for _ in range(n)])
    resumed = train.batches(sentences, vocab, start_step=n + 2, bucket=True, seed=5)
    for expected_batch in seen[n + 2 :]:
        x, y = next(resumed)
        assert np.array_equal(x, expected_batch[0]) and np.array_equal(y, expected_batch[1])


def test_few_shapes_batches_pad_to_a_few_lengths_and_change_nothing_else():
    """``few_shapes`` (crf/train.py's batches on JAX, where every new shape compiles): each batch is
    padded to ``padded_length`` of its longest sentence, holding the same ids and tags before that
    and padding after, so a pass brings less than half as many shapes (here 17 for 47 lengths when
    bucketed, 2 for 20 in corpus order) for at most a quarter more padded positions."""
    from crf import train

    rng = np.random.default_rng(2)
    lexicon = ["中国", "人民", "的", "天安门", "我", "爱", "北京", "新", "世纪"]
    sentences = [[lexicon[i] for i in rng.integers(0, len(lexicon), n)] for n in rng.integers(1, 150, 6000)]
    for vocab in (build_vocab(sentences), build_vocab(sentences, with_bigrams=True)):
        n = -(-len(sentences) // train.BATCH_SIZE)
        for bucket in (True, False):
            plain = train.batches(sentences, vocab, bucket=bucket, seed=4)
            few = train.batches(sentences, vocab, bucket=bucket, seed=4, few_shapes=True)
            lengths, rounded, sizes = set(), set(), [0, 0]
            for _ in range(n):
                (x, y), (x_few, y_few) = next(plain), next(few)
                x, x_few = (x, x_few) if isinstance(x, tuple) else ((x,), (x_few,))
                steps = x[0].shape[1]
                assert x_few[0].shape[1] == segment_padded(steps) and len(x_few) == len(x)
                for a, b in zip((*x, y), (*x_few, y_few)):
                    assert np.array_equal(b[:, :steps], a) and np.all(b[:, steps:] == 0)
                lengths.add(steps)
                rounded.add(x_few[0].shape[1])
                sizes = [sizes[0] + x[0].size, sizes[1] + x_few[0].size]
            assert len(rounded) < len(lengths) / 2 and sizes[0] < sizes[1] <= 1.25 * sizes[0], (lengths, rounded, sizes)


def test_training_on_jax_asks_for_few_shapes(monkeypatch):
    """With ``FEW_SHAPES`` on (JAX), train_seed asks ``batches`` for few shapes and packs the
    article's batches into a multiple of ``ROW_STEP`` rows, and the record's config and protocol say
    so; with it off, neither (the control)."""
    from crf import train

    class Asked(Exception):
        pass

    def fake_batches(*args, **kwargs):
        seen["few_shapes"] = kwargs.get("few_shapes")
        return iter(())

    def fake_packed(stream, reach, row_step):
        seen["row_step"] = row_step
        raise Asked

    def fake_fit(*args, **kwargs):
        raise Asked

    sentences = [["中国", "人民"], ["我", "爱", "北京"]] * 20
    monkeypatch.setattr(train, "batches", fake_batches)
    monkeypatch.setattr(train, "packed_batches", fake_packed)
    monkeypatch.setattr(keras.Model, "fit", fake_fit)
    checkpoint = types.SimpleNamespace(monitor=None, patience=None, restore=lambda model: 0, stopped=False)
    for on in (True, False):
        monkeypatch.setattr(train, "FEW_SHAPES", on)
        for variant, argv in (("article", ()), ("fast", ("--quick",))):
            seen = {}
            job = train_job(variant, *argv, "--heldout", "5", corpus_data=(sentences, [], [], set()))
            assert job.config.get("few_shapes", False) is on
            assert ("padded to few lengths" in job.protocol) is on
            with pytest.raises(Asked):
                train.train_seed(job, checkpoint)
            assert seen["few_shapes"] is on
            assert seen.get("row_step") == ((train.ROW_STEP if on else 1) if variant == "article" else None)
    assert train.ROW_STEP > 1


def test_bigram_dropout_replaces_a_share_of_bigrams_reproducibly():
    from crf import train

    rng = np.random.default_rng(1)
    lexicon = ["中国", "人民", "的", "天安门", "我", "爱", "北京", "新", "世纪"]
    sentences = [[lexicon[i] for i in rng.integers(0, len(lexicon), rng.integers(2, 9))] for _ in range(600)]
    vocab = build_vocab(sentences, with_bigrams=True)
    clean = train.batches(sentences, vocab, bucket=True, seed=3)
    dropped = train.batches(sentences, vocab, bucket=True, seed=3, bigram_dropout=0.33)
    shares = []
    for _ in range(5):
        (chars, pairs), tags = next(clean)
        (chars_d, pairs_d), tags_d = next(dropped)
        assert np.array_equal(chars, chars_d) and np.array_equal(tags, tags_d)  # characters and tags untouched
        changed = pairs != pairs_d
        assert np.all(pairs_d[changed] == 1) and np.all(
            pairs[pairs == 0] == pairs_d[pairs == 0]
        )  # to "unknown"; padding kept
        shares.append(np.mean(pairs_d[pairs > 1] == 1))
    assert 0.28 < np.mean(shares) < 0.38
    again = train.batches(sentences, vocab, start_step=4, bucket=True, seed=3, bigram_dropout=0.33)
    assert np.array_equal(next(again)[0][1], pairs_d)  # the same replacements when resumed at that step


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the XLA option of the segmenter is TensorFlow's")
def test_segmenter_with_xla_cuts_the_same():
    seg = tiny_segmenter("article")
    xla = Segmenter(seg.tagger, seg.vocab, jit_compile=True)
    lines = ["我爱北京天安门", "北京", "天安门我爱北京天安门我爱北京天安门我爱北京天安门我爱北京天安门我爱北京"]
    plain = Segmenter(tiny_segmenter("article").tagger, seg.vocab)
    plain.tagger.set_weights(seg.tagger.get_weights())
    assert xla.cut_lines(lines) == plain.cut_lines(lines)


def test_claim_holds_on_the_reference_and_fails_when_reversed():
    from crf import train
    from utils import report, runs

    reference = runs.load_results(runs.REFERENCE, "crf")
    assert train.CLAIM.verdict(reference, "full") == report.REPRODUCED
    worse = [
        {**r, "metrics": {**r["metrics"], "test_f1": 0.8}} if r["experiment"] == "article-pku" else r for r in reference
    ]
    assert train.CLAIM.verdict(worse, "full") == report.NOT_REPRODUCED


def spy_soft_targets(monkeypatch):
    """The calls of crf/train.py's ``soft_targets`` from now on, each as (args, kwargs); each still runs."""
    from crf import train

    calls, real = [], train.soft_targets
    monkeypatch.setattr(train, "soft_targets", lambda *args, **kw: calls.append((args, kw)) or real(*args, **kw))
    return calls


def save_teacher(folder, vocab, seed=None):
    """A ``fast_deep`` segmenter over ``vocab`` saved in ``folder`` (a teacher for ``soft_targets``), its
    weights as built or, with ``seed``, small random ones drawn from it."""
    from crf import train

    teacher = Segmenter(train.build_model(vocab, "fast_deep")[2], vocab)
    if seed is not None:
        random_weights(teacher.tagger, scale=0.05, seed=seed)
    teacher.save(folder)
    return teacher


def test_distillation_targets_and_their_batches(tmp_path):
    """``path_indicators`` puts a path in CRF.soft_loss's layout; ``batches(targets=)`` yields each
    sentence's target in its row (the same rows as the tags, in corpus order and bucketed), zeros on
    padding; ``soft_targets`` mixes the teachers' mean CRF with the gold path and refuses a teacher
    trained on other sentences."""
    from crf import train

    hot = train.path_indicators([0, 1, 3, 0])
    assert hot.shape == (4, 20) and hot[:, :4].argmax(1).tolist() == [0, 1, 3, 0] and hot.sum() == 4 + 3
    assert not hot[0, 4:].any() and hot[1, 4 + 0 * 4 + 1] == hot[2, 4 + 1 * 4 + 3] == hot[3, 4 + 3 * 4 + 0] == 1
    sentences = [["中国", "人民"], ["我", "爱", "北京"], ["新", "世纪", "的", "中国"]] * 20
    vocab = build_vocab(sentences, with_bigrams=True)
    targets = [train.path_indicators(word_tags(words)) for words in sentences]
    for bucket in (False, True):
        plain = train.batches(sentences, vocab, bucket=bucket, seed=3)
        soft = train.batches(sentences, vocab, bucket=bucket, seed=3, targets=targets)
        for _ in range(3):
            (x, tags), (same, y) = next(plain), next(soft)
            assert all(np.array_equal(a, b) for a, b in zip(x, same)) and y.shape == (*tags.shape, 20)
            real = x[0] != 0
            assert np.array_equal(y[..., :4].argmax(-1)[real], tags[real]) and not y[~real].any()

    teacher = save_teacher(tmp_path / "teacher", vocab, seed=0)
    texts = sentences[:3]
    got = train.soft_targets([tmp_path / "teacher"] * 2, texts, vocab, 0.25)  # two copies: their mean is one
    own = teacher.path_marginals(["".join(words) for words in texts])
    for mixed, expected, words in zip(got, own, texts):
        np.testing.assert_allclose(mixed, 0.25 * expected + 0.75 * train.path_indicators(word_tags(words)), atol=1e-6)
    with pytest.raises(SystemExit, match="vocabulary's chars are not those of this seed's training sentences"):
        train.soft_targets([tmp_path / "teacher"], texts, build_vocab(texts[:2] * 2, with_bigrams=True), 0.5)


def test_out_of_fold_teachers_label_only_the_sentences_they_did_not_see(tmp_path, monkeypatch):
    """``out_of_fold`` keeps the sentences outside a fold (index not f mod n); a fold's teacher
    (``fast_deep_f{f}``) trains on those alone; with ``folds``, ``soft_targets`` labels each sentence
    by the teacher of its fold only (mixed with the gold path), checks each teacher's vocabulary
    (with ``min_count``) against the sentences outside its fold, and refuses teachers in any wrong
    order or of the wrong number. The student ``fast_deep_oof`` passes its folds and min_count on and
    asks for its three fold teachers of its own seed."""
    from crf import train

    assert train.out_of_fold(list(range(10)), 1, 3) == [0, 2, 3, 5, 6, 8, 9]
    assert train.out_of_fold(list(range(4)), 0, 1) == []
    # 天 only in fold 0 and 地 only in fold 1 (twice each, so min_count 2 keeps them): the three
    # teachers' vocabularies all differ, so every wrong order is caught
    base = [["中国", "人民"], ["我", "爱", "北京"], ["新", "世纪", "的", "中国"], ["上海", "的", "人"]]
    sentences = [["天天", "向上"], ["地地", "道"]] + base * 6
    vocab = build_vocab(sentences, with_bigrams=True)

    def teachers(min_count, name):
        folders = []
        for fold in range(3):
            seen = build_vocab(train.out_of_fold(sentences, fold, 3), min_count=min_count, with_bigrams=True)
            save_teacher(tmp_path / f"{name}{fold}", seen, seed=fold)  # three different teachers
            folders.append(tmp_path / f"{name}{fold}")
        return folders

    folders = teachers(2, "teacher")
    assert len({frozenset(Segmenter.load(f).vocab["chars"]) for f in folders}) == 3
    got = train.soft_targets(folders, sentences, vocab, 0.5, folds=3, min_count=2)
    texts = ["".join(words) for words in sentences]
    own = [Segmenter.load(folder).path_marginals(texts) for folder in folders]
    for i, (mixed, words) in enumerate(zip(got, sentences)):
        gold = train.path_indicators(word_tags(words))
        np.testing.assert_allclose(mixed, 0.5 * own[i % 3][i] + 0.5 * gold, atol=1e-6)
        # the control: another fold's teacher would have given another target
        assert np.abs(mixed - (0.5 * own[(i + 1) % 3][i] + 0.5 * gold)).max() > 1e-3
    for order in ([0, 2, 1], [1, 0, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]):
        with pytest.raises(SystemExit, match="outside fold . of 3"):
            train.soft_targets([folders[f] for f in order], sentences, vocab, 0.5, folds=3, min_count=2)
    with pytest.raises(SystemExit, match="3 folds, 2 teachers"):
        train.soft_targets(folders[:2], sentences, vocab, 0.5, folds=3, min_count=2)
    # teachers that kept units seen 3 times or more: accepted with min_count 3, refused with 2
    strict = teachers(3, "strict")
    train.soft_targets(
        strict, sentences, build_vocab(sentences, min_count=3, with_bigrams=True), 0.5, folds=3, min_count=3
    )
    with pytest.raises(SystemExit, match="outside fold 0 of 3"):
        train.soft_targets(strict, sentences, vocab, 0.5, folds=3, min_count=2)

    # a teacher trains on the other folds of its seed's training sentences
    spied = []
    real_vocab = train.build_vocab
    monkeypatch.setattr(train, "build_vocab", lambda s, **kw: spied.append(s) or real_vocab(s, **kw))
    job = train_job("fast_deep_f1", "--heldout", "3", corpus_data=(sentences, [], [], set()))
    train_seed_until_optimizer(monkeypatch, job)
    fit = train.split(sentences, 0, 3)[0]
    assert spied[0] == train.out_of_fold(fit, 1, 3)
    assert (job.config["fold"], job.config["epochs"]) == ([1, 3], 1)

    # the student: its fold teachers of its own seed, with its folds and min_count
    save = tmp_path / "models"
    for fold in range(3):
        seen = real_vocab(train.out_of_fold(fit, fold, 3), min_count=2, with_bigrams=True)
        save_teacher(save / f"fast_deep_f{fold}-pku-seed0", seen)
    calls = spy_soft_targets(monkeypatch)
    student = train_job("fast_deep_oof", "--heldout", "3", "--save", str(save), corpus_data=(sentences, [], [], set()))
    train_seed_until_optimizer(monkeypatch, student)
    (folders_used, taught, _, weight), kw = calls[0]
    assert [f.name for f in folders_used] == [f"fast_deep_f{f}-pku-seed0" for f in range(3)]
    assert taught == fit and weight == [0.5] * len(fit)
    assert kw == {"folds": 3, "min_count": student.config["min_count"], "seen": fit}
    args = types.SimpleNamespace(save=tmp_path, corpus="pku", mode="full")
    assert [f.name for f in train.teacher_folders(args, "fast_deep_oof", 7)] == [
        f"fast_deep_f{f}-pku-seed7" for f in range(3)
    ]


def test_a_teacher_must_have_trained_on_exactly_the_students_sentences(tmp_path, capsys):
    """``trained_on`` names a set of segmented sentences (any order; one more, fewer or segmented
    otherwise is another); ``soft_targets`` refuses a teacher whose ``TRAINED_ON`` names other
    sentences than ``seen`` (by default the sentences it labels; with folds, those outside each
    teacher's fold), even one sentence fewer, which leaves the vocabulary as it was (the control:
    without the file the vocabulary check alone accepts that teacher, and says it checked only that)."""
    from crf import train

    sentences = [["中国", "人民"], ["我", "爱", "北京"], ["新", "世纪", "的", "中国"], ["上海", "的", "人"]] * 6
    digest = train.trained_on(sentences)
    assert digest == train.trained_on(sentences[::-1]) and digest["sentences"] == 24
    assert train.trained_on(sentences[1:]) != digest
    assert train.trained_on([["中国人", "民"]] + sentences[1:]) != digest  # the same characters, cut otherwise
    vocab = build_vocab(sentences, with_bigrams=True)
    fewer_vocab = build_vocab(sentences[1:], with_bigrams=True)
    assert all(set(fewer_vocab[t]) == set(vocab[t]) for t in ("chars", "bigrams"))  # so the vocabulary cannot tell

    def teacher(name, taught):
        save_teacher(tmp_path / name, vocab)
        if taught is not None:
            (tmp_path / name / train.TRAINED_ON).write_text(json.dumps(train.trained_on(taught)))
        return tmp_path / name

    texts = sentences[:3]
    right, fewer, unknown = teacher("right", sentences[::-1]), teacher("fewer", sentences[1:]), teacher("old", None)
    assert len(train.soft_targets([right], sentences, vocab, 0.5)) == 24
    with pytest.raises(SystemExit, match=r"fewer/trained_on.json: the teacher was trained on 23 sentences"):
        train.soft_targets([right, fewer], sentences, vocab, 0.5)
    capsys.readouterr()
    train.soft_targets([unknown], texts, vocab, 0.5, seen=sentences)
    note = "old: no trained_on.json (saved before it was written): checked by its vocabulary only"
    assert note in capsys.readouterr().out
    # the sentences it labels may be others than those it trained on (the swapped copies): seen says which
    train.soft_targets([right], texts, vocab, 0.5, seen=sentences)
    with pytest.raises(SystemExit, match="not on the 3 of this seed's training sentences"):
        train.soft_targets([right], texts, vocab, 0.5)
    # fold teachers: each trained on the others of seen (a 25th sentence, of known characters and
    # bigrams, makes the folds differ; each fold's vocabulary is the whole text's)
    sentences = sentences + [["中国", "的", "人"]]
    folds = [train.out_of_fold(sentences, f, 3) for f in range(3)]
    assert all(set(build_vocab(fold, with_bigrams=True)[t]) == set(vocab[t]) for fold in folds for t in vocab)
    folders = [teacher(f"fold{f}", fold) for f, fold in enumerate(folds)]
    train.soft_targets(folders, sentences, vocab, 0.5, folds=3)
    with pytest.raises(SystemExit, match="fold1/trained_on.json.* outside fold 0 of 3"):
        train.soft_targets(folders[1:] + folders[:1], sentences, vocab, 0.5, folds=3)
    (tmp_path / "fold0" / train.TRAINED_ON).write_text("[1, 2]")  # not what train_seed writes
    with pytest.raises(SystemExit, match="trained on None sentences"):
        train.soft_targets(folders, sentences, vocab, 0.5, folds=3)
    from utils.runs import ModelFileError

    (tmp_path / "fold0" / train.TRAINED_ON).write_text('{"sentences": 3')  # cut short
    with pytest.raises(ModelFileError, match="fold0/trained_on.json"):
        train.soft_targets(folders, sentences, vocab, 0.5, folds=3)
    # folds label the sentences they were cut from: not swapped copies beside them
    with pytest.raises(SystemExit, match="swapped copies and folds do not go together"):
        train.soft_targets(folders, sentences + sentences[:3], vocab, 0.5, folds=3, seen=sentences)


def test_swapped_copies_replace_words_at_their_rate_by_words_drawn_over_the_kinds(tmp_path):
    """``swap_words`` keeps each sentence's length in words and replaces each word with probability
    ``rate`` (binomial bounds) by a word drawn uniformly over the distinct words, not by how often they
    occur (the control: a draw by frequency fails the same check); rate 0 copies, rate 1 replaces every
    word; the same seed gives the same copy, another seed another; a rate outside [0, 1] is refused."""
    from crf import train

    # one word makes up nearly all of the text; 40 others appear once each
    sentences = [["的"] * 9 + [f"词{i}"] for i in range(40)] * 25
    kinds = sorted({w for words in sentences for w in words})
    copies = train.swap_words(sentences, 0.3, seed=5)
    assert [len(c) for c in copies] == [len(s) for s in sentences]
    changed = sum(a != b for c, s in zip(copies, sentences) for a, b in zip(c, s))
    words = sum(map(len, sentences))
    # a swap may draw the word it replaces: 1/41 of them do
    expected = 0.3 * words * (1 - 1 / len(kinds))
    assert abs(changed - expected) < 4 * np.sqrt(words * 0.3 * 0.7)
    # word by word, not sentence by sentence: the changes a sentence spread as a binomial's of its 10
    # words (variance about 2.1; whole sentences swapped at 0.3 would give about 21)
    per_sentence = [sum(a != b for a, b in zip(c, s)) for c, s in zip(copies, sentences)]
    assert 1.5 < np.var(per_sentence) < 3.0

    def uniform_over_kinds(drawn):
        counts = np.array([drawn.count(k) for k in kinds])
        chi2 = ((counts - len(drawn) / len(kinds)) ** 2 / (len(drawn) / len(kinds))).sum()
        return chi2 < len(kinds) + 5 * np.sqrt(2 * len(kinds))  # mean k - 1, sd sqrt(2 (k - 1))

    drawn = [w for c, s in zip(train.swap_words(sentences, 1.0, seed=1), sentences) for w in c]
    assert uniform_over_kinds(drawn)
    rng = np.random.default_rng(0)
    tokens = [w for s in sentences for w in s]
    assert not uniform_over_kinds([tokens[i] for i in rng.integers(len(tokens), size=len(drawn))])

    assert train.swap_words(sentences, 0.0, seed=1) == sentences
    assert train.swap_words(sentences, 0.3, seed=5) == copies != train.swap_words(sentences, 0.3, seed=6)
    for rate in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"rate must be a probability in \\[0, 1\\], got {rate}"):
            train.swap_words(sentences, rate, seed=0)


def test_the_swap_variants_train_on_the_originals_and_their_copies(tmp_path, monkeypatch):
    """``fast_deep_swap`` trains on its split's sentences and their swapped copies (gold paths, the
    vocabulary of the originals only); ``fast_deep_kd1_swap`` asks its teachers to label both, the
    originals at weight 1 (teachers only, as fast_deep_kd1) and the copies at 0.5 (half gold);
    ``soft_targets`` takes a weight a sentence."""
    from crf import train

    class Started(Exception):
        pass

    sentences = [["中国", "人民"], ["我", "爱", "北京"], ["新", "世纪", "的", "中国"], ["上海", "的", "人"]] * 15
    fit = train.split(sentences, 0, 5)[0]
    copies = train.swap_words(fit, 0.1, 0)
    assert copies != fit
    streams, vocabs = [], []
    real_vocab = train.build_vocab
    monkeypatch.setattr(train, "build_vocab", lambda s, **kw: vocabs.append(list(s)) or real_vocab(s, **kw))

    def started(sentences, *args, **kw):
        streams.append((list(sentences), kw.get("targets")))
        raise Started

    monkeypatch.setattr(train, "batches", started)
    job = train_job("fast_deep_swap", "--heldout", "5", corpus_data=(sentences, [], [], set()))
    fresh = types.SimpleNamespace(monitor=None, patience=None, stopped=False, restore=lambda model: 0)
    with pytest.raises(Started):
        train.train_seed(job, fresh)
    assert streams[0] == (fit + copies, None) and vocabs == [fit]
    assert (job.config["swap"], job.config.get("soft")) == (0.1, None)

    save = tmp_path / "models"
    vocab = real_vocab(fit, min_count=2, with_bigrams=True)
    for member in range(3):
        save_teacher(save / f"fast_deep_m{member}-pku-seed0", vocab)
    calls = spy_soft_targets(monkeypatch)
    student = train_job(
        "fast_deep_kd1_swap", "--heldout", "5", "--save", str(save), corpus_data=(sentences, [], [], set())
    )
    with pytest.raises(Started):
        train.train_seed(student, fresh)
    (folders, taught, _, weights), kw = calls[0]
    assert [f.name for f in folders] == [f"fast_deep_m{m}-pku-seed0" for m in range(3)]
    assert taught == fit + copies and weights == [1.0] * len(fit) + [0.5] * len(copies)
    assert kw["seen"] == fit  # the teachers trained on the originals only
    assert streams[1][0] == fit + copies and len(streams[1][1]) == len(fit + copies)

    # a weight a sentence: each mixes its own share of the teachers' expectation with its gold path
    texts = fit[:3]
    own = Segmenter.load(folders[0]).path_marginals(["".join(w) for w in texts])
    got = train.soft_targets(folders[:1], texts, vocab, [1.0, 0.5, 0.0])
    for mixed, expected, words, w in zip(got, own, texts, (1.0, 0.5, 0.0)):
        gold = train.path_indicators(word_tags(words))
        np.testing.assert_allclose(mixed, w * expected + (1 - w) * gold, atol=1e-6)


def test_the_student_finds_its_teachers_and_members_reseed(tmp_path, monkeypatch, capsys):
    """``fast_deep_kd``'s seed is taught by the three members trained with its seed (its own split),
    half and half with the gold paths; fast_deep_kd1's refit by the three fast_deep_refit seeds whatever its own. A
    member m > 0 reseeds with seed + 1000 m (member 0 is fast_deep as it was). Teachers missing from
    --save stop the run before anything trains, naming them and the variants that make them."""
    from crf import train

    sentences = [["中国", "人民"], ["我", "爱", "北京"], ["新", "世纪", "的", "中国"]] * 20
    save = tmp_path / "models"
    job = train_job("fast_deep_kd", "--heldout", "5", "--save", str(save), corpus_data=(sentences, [], [], set()))
    fit, _ = train.split(sentences, 0, 5)
    vocab = build_vocab(fit, min_count=2, with_bigrams=True)
    for member in range(3):
        save_teacher(save / f"fast_deep_m{member}-pku-seed0", vocab)
    calls = spy_soft_targets(monkeypatch)
    train_seed_until_optimizer(monkeypatch, job)
    (folders, taught, _, weight), _ = calls[0]
    assert [f.name for f in folders] == [f"fast_deep_m{m}-pku-seed0" for m in range(3)] and weight == [0.5] * len(fit)
    assert taught == fit

    args = types.SimpleNamespace(save=save, corpus="pku", mode="full")
    assert [f.name for f in train.teacher_folders(args, "fast_deep_kd1_refit", 7)] == [
        f"fast_deep_refit-pku-seed{s}" for s in range(3)
    ]
    refit = train_job("fast_deep_kd1_refit").config
    assert (refit["epochs"], refit["heldout"], refit["early_stopping"], refit["soft"]) == (6, 0, None, 1.0)
    assert [f.name for f in train.teacher_folders(args, "fast_deep_kd1_swap_refit", 7)] == [
        f"fast_deep_refit-pku-seed{s}" for s in range(3)
    ]
    refit = train_job("fast_deep_kd1_swap_refit").config
    assert (refit["epochs"], refit["heldout"], refit["early_stopping"]) == (3, 0, None)
    assert (refit["soft"], refit["swap"], refit["swap_soft"]) == (1.0, 0.1, 0.5)
    assert [f.name for f in train.teacher_folders(args, "fast_deep_kd", 7)] == [
        f"fast_deep_m{m}-pku-seed7" for m in range(3)
    ]

    seeds = []
    monkeypatch.setattr(train.runs, "set_seed", seeds.append)
    for variant, expected in (("fast_deep_m2", [2000]), ("fast_deep_m0", [])):
        seeds.clear()
        train_seed_until_optimizer(
            monkeypatch, train_job(variant, "--heldout", "5", corpus_data=(sentences, [], [], set()))
        )
        assert seeds == expected

    def refused(*argv):
        with pytest.raises(SystemExit):
            train.main([*argv, "--smoke", "--save", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
        return capsys.readouterr().err

    err = refused("--variant", "fast_deep_kd")
    assert "--variant fast_deep_kd is taught by models that are not there" in err
    assert "fast_deep_m0-pku-smoke-seed0" in err and "add --variant fast_deep_m0 fast_deep_m1 fast_deep_m2" in err
    # named after the student, its teachers would be trained too late
    assert "taught by models that are not there" in refused(
        "--variant", "fast_deep_kd", "fast_deep_m0", "fast_deep_m1", "fast_deep_m2"
    )
    # a teacher seed with a record is reused, not trained: its model folder must be there
    record = tmp_path / "out" / "crf" / "fast_deep_m1-pku-smoke" / "seed0.json"
    record.parent.mkdir(parents=True)
    record.write_text("{}")
    err = refused("--variant", "fast_deep_m0", "fast_deep_m1", "fast_deep_m2", "fast_deep_kd")
    assert "fast_deep_m1-pku-smoke-seed0" in err and "fast_deep_m0-pku" not in err
    # fixed-seed teachers trained on every sentence exist only in the full protocol
    assert "only the full protocol makes; drop --smoke" in refused(
        "--variant", "fast_deep_refit", "fast_deep_kd1_refit"
    )
    # the teachers' ensembles: one a seed, of that seed's three members
    from utils import cli

    argv = ["--variant", "fast_deep_m0", "--ensembles", "fast_deep_m", "strong"]
    ensembles = [
        (j.experiment, j.seed, j.config["models"])
        for j in train.jobs(cli.parse(train.parser(), argv), None)
        if j.experiment.startswith("ensemble")
    ]
    assert ensembles[:3] == [
        ("ensemble-fast_deep_m-pku", s, [f"fast_deep_m{m}-pku-seed{s}" for m in range(3)]) for s in range(3)
    ]
    assert ensembles[3] == ("ensemble-strong-pku", 0, [f"strong-pku-seed{s}" for s in range(3)])
    args = types.SimpleNamespace(
        variant=["fast_deep_m0", "fast_deep_kd"], out=tmp_path / "out", corpus="pku", mode="smoke", force=False
    )
    assert train.made_here(args, "fast_deep_m0", 0, [0], before="fast_deep_kd")
    assert not train.made_here(args, "fast_deep_m0", 1, [0], before="fast_deep_kd")  # not among the run's seeds
