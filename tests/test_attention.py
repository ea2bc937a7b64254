"""attention/: the layer against keras.layers.MultiHeadAttention and a NumPy oracle, masking and
causality (nothing leaks), permutation equivariance, the position embeddings against their formula,
saving, XLA, and the experiment's pieces."""

import numpy as np
import pytest
from conftest import BACKEND, REPO, Killed, check_smoke_run, grad, run_copied_alone

pytest.importorskip(BACKEND, reason=f"KERAS_BACKEND={BACKEND} but {BACKEND} is not installed")
import keras

from attention.layers import (
    Attention,
    PositionEmbedding,
    TrainablePositionEmbedding,
    sinusoidal_position_embedding,
)

np_ = keras.ops.convert_to_numpy
B, TQ, TK, DQ, DV, HEADS, SIZE = 3, 5, 7, 12, 10, 4, 6


def data(seed=0, tq=TQ, tk=TK):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, tq, DQ)).astype("float32")
    v = rng.normal(size=(B, tk, DV)).astype("float32")
    q_mask = np.ones((B, tq), bool)
    q_mask[0, 3:] = False  # right padding
    q_mask[1, :2] = False  # left padding
    k_mask = np.ones((B, tk), bool)
    k_mask[0, 4:] = False
    k_mask[1, :3] = False
    k_mask[2, [1, 4]] = False  # holes
    return q, v, q_mask, k_mask


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def oracle(layer, q, k, v, q_mask=None, k_mask=None, causal=False, attention_mask=None):
    """The article's formula per head in float64, from the layer's own weights: softmax(Q K^T [/ sqrt d]) V,
    masked keys excluded, heads concatenated, [W^O], output zeroed at masked queries."""
    w = {x.path.split("/")[-1]: np.asarray(np_(x), "float64") for x in layer.weights}
    bias = lambda name: w.get(name, 0.0)
    Q = q @ w["q_kernel"] + bias("q_bias")
    K = k @ w["k_kernel"] + bias("k_bias")
    V = v @ w["v_kernel"] + bias("v_bias")
    b, tq, tk = q.shape[0], q.shape[1], k.shape[1]
    allowed = np.ones((b, tq, tk), bool)
    if k_mask is not None:
        allowed &= k_mask[:, None, :]
    if causal:
        allowed &= np.tril(np.ones((tq, tk), bool))[None]
    if attention_mask is not None:
        allowed &= attention_mask
    out = np.zeros((b, tq, layer.heads * layer.size_per_head))
    for h in range(layer.heads):
        cols = slice(h * layer.size_per_head, (h + 1) * layer.size_per_head)
        logits = Q[:, :, cols] @ K[:, :, cols].transpose(0, 2, 1)
        if layer.use_scale:
            logits /= np.sqrt(layer.size_per_head)
        logits = np.where(allowed, logits, -np.inf)
        e = np.where(allowed, np.exp(logits - np.max(np.where(allowed, logits, -1e300), -1, keepdims=True)), 0.0)
        weights = e / np.maximum(e.sum(-1, keepdims=True), 1e-300)
        out[:, :, cols] = weights @ V[:, :, cols]
    if layer.output_dim is not None:
        out = out @ w["output_kernel"] + bias("output_bias")
    if q_mask is not None:
        out = out * q_mask[..., None]
    return out


def mha_twin(layer, q, v):
    """keras.layers.MultiHeadAttention given the layer's weights (same order, Keras's (d, heads, size) shapes)."""
    mha = keras.layers.MultiHeadAttention(layer.heads, layer.size_per_head, use_bias=layer.use_bias)
    mha(q, v)
    mha.set_weights([w.reshape(m.shape) for w, m in zip(layer.get_weights(), mha.get_weights())])
    return mha


# --------------------------------------------------------------------------------------------------
# Attention: equivalence


@pytest.mark.layers
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("use_bias", [False, True])
def test_equals_multi_head_attention_with_the_same_weights(fused, masked, use_bias):
    q, v, q_mask, k_mask = data()
    layer = Attention(
        HEADS, SIZE, use_scale=True, output_dim=DQ, use_bias=use_bias, fused=fused, bias_initializer="random_normal"
    )
    layer([q, v])
    mha = mha_twin(layer, q, v)
    if masked:
        ours, ours_w = layer([q, v], mask=[q_mask, k_mask], return_attention_scores=True)
        ours_fast = layer([q, v], mask=[q_mask, k_mask])
        keras_out, keras_w = mha(q, v, query_mask=q_mask, value_mask=k_mask, return_attention_scores=True)
        real = q_mask & k_mask.any(-1)[:, None]  # MultiHeadAttention leaves padded query rows unzeroed
    else:
        ours, ours_w = layer([q, v], return_attention_scores=True)
        ours_fast = layer([q, v])
        keras_out, keras_w = mha(q, v, return_attention_scores=True)
        real = np.ones((B, TQ), bool)
    ours, ours_w, ours_fast, keras_out, keras_w = map(np_, (ours, ours_w, ours_fast, keras_out, keras_w))
    np.testing.assert_allclose(ours[real], np_(keras_out)[real], atol=1e-5)
    np.testing.assert_allclose(ours_fast[real], np_(keras_out)[real], atol=1e-5)
    np.testing.assert_allclose(ours_w.transpose(0, 2, 1, 3)[real], keras_w.transpose(0, 2, 1, 3)[real], atol=1e-5)
    if masked:
        assert np.all(ours[~q_mask] == 0) and np.all(ours_fast[~q_mask] == 0)


@pytest.mark.layers
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(
    "options",
    [
        {},  # the article's layer
        {"use_scale": True},
        {"use_scale": True, "use_bias": True, "output_dim": 9, "bias_initializer": "random_normal"},
        {"causal": True},
    ],
    ids=["article", "scaled", "projected", "causal"],
)
@pytest.mark.parametrize("masked", [False, True])
def test_matches_the_formula_self_and_cross(options, fused, masked):
    q, v, q_mask, k_mask = data(1, tq=TK, tk=TK)
    k = np.random.default_rng(2).normal(size=v.shape).astype("float32")
    for inputs, (qq, kk, vv) in (([q, k, v], (q, k, v)), (q, (q, q, q)), ([q, v], (q, v, v))):
        layer = Attention(HEADS, SIZE, fused=fused, **options)
        qm, km = (q_mask, k_mask) if masked else (None, None)
        if isinstance(inputs, list):
            mask = [qm, km] + ([km] if len(inputs) == 3 else []) if masked else None
        else:
            mask, km = (qm, qm) if masked else (None, None)
        out = np_(layer(inputs, mask=mask))
        expected = oracle(layer, qq, kk, vv, qm, km, causal=options.get("causal", False))
        np.testing.assert_allclose(out, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.layers
def test_fused_and_matmul_paths_agree_in_value_and_gradient():
    q, v, q_mask, k_mask = data(3)
    fused = Attention(HEADS, SIZE, use_scale=True, causal=True, fused=True)
    plain = Attention(HEADS, SIZE, use_scale=True, causal=True, fused=False)
    fused([q, v])
    plain([q, v])
    plain.set_weights(fused.get_weights())
    np.testing.assert_allclose(
        np_(fused([q, v], mask=[q_mask, k_mask])), np_(plain([q, v], mask=[q_mask, k_mask])), atol=1e-6
    )
    g_fused = grad(lambda x: fused([x, v], mask=[q_mask, k_mask]) ** 2, q)
    g_plain = grad(lambda x: plain([x, v], mask=[q_mask, k_mask]) ** 2, q)
    assert np.all(np.isfinite(g_fused))
    np.testing.assert_allclose(g_fused, g_plain, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------------
# Attention: masks, causality, symmetry


@pytest.mark.layers
@pytest.mark.parametrize("fused", [True, False])
def test_padded_keys_do_not_leak(fused):
    q, v, q_mask, k_mask = data(4)
    layer = Attention(HEADS, SIZE, fused=fused)
    before = np_(layer([q, v], mask=[q_mask, k_mask]))
    v2 = v.copy()
    v2[~k_mask] = np.random.default_rng(5).normal(scale=100.0, size=v2[~k_mask].shape)
    after = np_(layer([q, v2], mask=[q_mask, k_mask]))
    np.testing.assert_allclose(after, before, atol=1e-5)
    # the check can fail: the same change without the mask does move the outputs
    assert np.abs(np_(layer([q, v2])) - np_(layer([q, v]))).max() > 1e-2


@pytest.mark.layers
@pytest.mark.parametrize("fused", [True, False])
def test_causal_outputs_do_not_see_the_future(fused):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(B, 9, DQ)).astype("float32")
    layer = Attention(HEADS, SIZE, causal=True, fused=fused)
    before = np_(layer(x))
    for t in range(9):
        x2 = x.copy()
        x2[:, t + 1 :] = rng.normal(size=x2[:, t + 1 :].shape)
        np.testing.assert_allclose(np_(layer(x2))[:, : t + 1], before[:, : t + 1], atol=1e-5)
    _, weights = layer(x, return_attention_scores=True)
    assert np.all(np.triu(np_(weights), k=1) == 0)
    not_causal = Attention(HEADS, SIZE, fused=fused)
    x2 = x.copy()
    x2[:, -1] += 1.0
    assert np.abs(np_(not_causal(x2))[:, 0] - np_(not_causal(x))[:, 0]).max() > 1e-4


@pytest.mark.layers
def test_keras_masks_are_picked_up_and_passed_on():
    """Embedding(mask_zero=True) -> Attention -> GlobalAveragePooling1D: the pooled vector is the mean over
    real tokens only, and equals the result with the masks given by hand."""
    tokens = np.array([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7], [9, 8, 0, 0, 0]], "int32")
    inputs = keras.Input((None,), dtype="int32")
    emb = keras.layers.Embedding(20, DQ, mask_zero=True)
    att = Attention(HEADS, SIZE)
    pooled = keras.layers.GlobalAveragePooling1D()(att(emb(inputs)))
    model = keras.Model(inputs, pooled)
    got = np_(model(tokens))
    x = np_(emb(tokens))
    real = tokens != 0
    by_hand = np_(att(x, mask=real))
    expected = (by_hand * real[..., None]).sum(1) / real.sum(1, keepdims=True)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(by_hand, oracle(att, x, x, x, real, real), atol=2e-5)


@pytest.mark.layers
@pytest.mark.parametrize("fused", [True, False])
def test_a_query_with_no_key_gets_zeros_not_nan(fused):
    q, v, _, _ = data(7)
    k_mask = np.ones((B, TK), bool)
    k_mask[1] = False
    layer = Attention(HEADS, SIZE, fused=fused)
    out, weights = (np_(t) for t in layer([q, v], mask=[None, k_mask], return_attention_scores=True))
    fast = np_(layer([q, v], mask=[None, k_mask]))
    assert np.all(np.isfinite(fast)) and np.all(fast[1] == 0) and np.all(out[1] == 0) and np.all(weights[1] == 0)
    np.testing.assert_allclose(weights[[0, 2]].sum(-1), 1.0, atol=1e-6)
    assert np.all(np.isfinite(grad(lambda x: layer([x, v], mask=[None, k_mask]), q)))


@pytest.mark.layers
def test_self_attention_is_permutation_equivariant_without_position_embedding():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(B, 11, DQ)).astype("float32")
    perm = rng.permutation(11)
    layer = Attention(HEADS, SIZE)
    np.testing.assert_allclose(np_(layer(x[:, perm])), np_(layer(x))[:, perm], atol=1e-5)
    # with the position embedding the order matters (so the check above can fail)
    pe = PositionEmbedding()
    assert np.abs(np_(layer(pe(x[:, perm]))) - np_(layer(pe(x)))[:, perm]).max() > 1e-3


@pytest.mark.layers
def test_dropout_acts_in_training_only_and_weights_are_distributions():
    q, v, q_mask, k_mask = data(9)
    layer = Attention(HEADS, SIZE, dropout=0.5)
    inference = np_(layer([q, v], mask=[q_mask, k_mask]))
    keras.utils.set_random_seed(0)
    training = np_(layer([q, v], mask=[q_mask, k_mask], training=True))
    np.testing.assert_allclose(inference, oracle(layer, q, v, v, q_mask, k_mask), atol=2e-5)
    assert np.abs(training - inference).max() > 1e-3
    _, weights = layer([q, v], mask=[q_mask, k_mask], return_attention_scores=True)
    weights = np_(weights)
    assert weights.shape == (B, HEADS, TQ, TK)
    rows = weights.transpose(0, 2, 1, 3)[q_mask]
    np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-6)
    assert np.all(weights.transpose(0, 2, 1, 3)[~q_mask] == 0)
    assert np.all(weights.transpose(0, 3, 1, 2)[~k_mask] == 0)


@pytest.mark.layers
@pytest.mark.parametrize("fused", [True, False])
def test_attention_mask_matches_the_oracle_and_takes_2d(fused):
    q, v, q_mask, k_mask = data(13)
    extra = np.random.default_rng(14).random((B, TQ, TK)) > 0.4
    layer = Attention(HEADS, SIZE, use_scale=True, fused=fused)
    out = np_(layer([q, v], mask=[q_mask, k_mask], attention_mask=extra))
    np.testing.assert_allclose(out, oracle(layer, q, v, v, q_mask, k_mask, attention_mask=extra), atol=2e-5)
    shared = np_(layer([q, v], attention_mask=extra[0]))  # (Tq, Tk): the same for every sequence
    np.testing.assert_allclose(
        shared, oracle(layer, q, v, v, attention_mask=np.broadcast_to(extra[0], extra.shape)), atol=2e-5
    )


@pytest.mark.layers
def test_key_and_value_masks_combine():
    q, v, q_mask, k_mask = data(15)
    v_mask = np.random.default_rng(16).random((B, TK)) > 0.3
    v_mask[:, 0] = True
    layer = Attention(HEADS, SIZE)
    both = np_(layer([q, v, v], mask=[q_mask, k_mask, v_mask]))
    np.testing.assert_allclose(both, np_(layer([q, v, v], mask=[q_mask, k_mask & v_mask, None])), atol=1e-6)
    np.testing.assert_allclose(
        np_(layer([q, v, v], mask=[None, None, v_mask])), oracle(layer, q, v, v, k_mask=v_mask), atol=2e-5
    )


@pytest.mark.layers
def test_masks_of_the_wrong_shape_raise_clear_errors():
    q, v, q_mask, k_mask = data(17)
    layer = Attention(HEADS, SIZE)
    with pytest.raises(ValueError, match="pass one mask per input"):
        layer([q, v], mask=q_mask)
    with pytest.raises(ValueError, match=r"the key mask must be \(batch, 7\)"):
        layer([q, v], mask=[q_mask, q_mask])
    with pytest.raises(ValueError, match=r"the query mask must be \(batch, 5\)"):
        layer(q, mask=q_mask[:, :3])
    with pytest.raises(ValueError, match="attention_mask must be"):
        layer([q, v], attention_mask=np.ones((TQ, TQ), bool))


@pytest.mark.layers
def test_symbolic_shapes_with_and_without_weights():
    q_in, v_in = keras.Input((None, DQ)), keras.Input((9, DV))
    layer = Attention(HEADS, SIZE, output_dim=11)
    out, weights = layer([q_in, v_in], return_attention_scores=True)
    assert tuple(out.shape) == (None, None, 11) and tuple(weights.shape) == (None, HEADS, None, 9)
    assert layer.compute_output_shape([(None, 5, DQ), (None, 9, DV)]) == (None, 5, 11)
    model = keras.Model([q_in, v_in], [out, weights])
    q, v, _, _ = data(18, tk=9)
    got_out, got_w = model([q, v])
    assert tuple(got_out.shape) == (B, TQ, 11) and tuple(got_w.shape) == (B, HEADS, TQ, 9)


@pytest.mark.layers
def test_attention_mask_argument_combines_with_keras_masks():
    q, v, q_mask, k_mask = data(10)
    rng = np.random.default_rng(11)
    extra = rng.random((B, TQ, TK)) > 0.3
    layer = Attention(HEADS, SIZE)
    _, weights = layer([q, v], mask=[q_mask, k_mask], attention_mask=extra, return_attention_scores=True)
    allowed = extra & k_mask[:, None, :] & q_mask[:, :, None]
    assert np.all(np_(weights).transpose(0, 2, 1, 3)[~np.broadcast_to(allowed[:, :, None], (B, TQ, HEADS, TK))] == 0)
    with pytest.raises(ValueError, match="attention_mask must be"):
        layer([q, v], attention_mask=extra[0, 0])


@pytest.mark.layers
@pytest.mark.parametrize("fused", [True, False])
def test_mixed_precision_matches_float32(fused):
    q, v, q_mask, k_mask = data(12)
    layer = Attention(HEADS, SIZE, use_scale=True, dtype="mixed_float16", fused=fused)
    full = Attention(HEADS, SIZE, use_scale=True)
    layer([q, v])
    full([q, v])
    full.set_weights(layer.get_weights())
    out = np_(layer([q, v], mask=[q_mask, k_mask]))
    assert out.dtype == np.float16 and np.all(np.isfinite(out))
    np.testing.assert_allclose(out.astype("float32"), np_(full([q, v], mask=[q_mask, k_mask])), atol=2e-2)


@pytest.mark.layers
def test_mixed_precision_logits_do_not_overflow_on_the_matmul_path():
    """Logits beyond float16's 65504 (here about 1.2e5) are computed and softmaxed in float32."""
    q, v, q_mask, k_mask = data(12)
    layer = Attention(HEADS, SIZE, dtype="mixed_float16", fused=False, kernel_initializer="ones")
    out = np_(layer([q * 0 + 10, v * 0 + 10], mask=[q_mask, k_mask]))
    assert out.dtype == np.float16 and np.all(np.isfinite(out))


# --------------------------------------------------------------------------------------------------
# Position embeddings


@pytest.mark.layers
@pytest.mark.parametrize("layout", ["cos_sin", "interleaved"])
def test_sinusoids_match_the_formula(layout):
    size, length = 16, 50
    table = np_(sinusoidal_position_embedding(length, size, layout))
    expected = np.zeros((length, size))
    for p in range(length):
        for i in range(size // 2):
            angle = p / 10000 ** (2 * i / size)
            if layout == "cos_sin":  # the article: all cos, then all sin
                expected[p, i], expected[p, size // 2 + i] = np.cos(angle), np.sin(angle)
            else:  # the paper: PE(p, 2i) = sin, PE(p, 2i + 1) = cos
                expected[p, 2 * i], expected[p, 2 * i + 1] = np.sin(angle), np.cos(angle)
    np.testing.assert_allclose(table, expected, atol=2e-5)


@pytest.mark.layers
def test_the_two_layouts_are_one_channel_permutation_apart():
    size = 128
    article = np_(sinusoidal_position_embedding(300, size, "cos_sin"))
    paper = np_(sinusoidal_position_embedding(300, size, "interleaved"))
    half = size // 2
    perm = np.empty(size, int)  # paper channel j comes from article channel perm[j]
    perm[0::2] = np.arange(half) + half  # sin_i
    perm[1::2] = np.arange(half)  # cos_i
    np.testing.assert_array_equal(paper, article[:, perm])
    assert not np.allclose(paper, article)


@pytest.mark.layers
def test_position_embedding_sum_and_concat_any_length():
    layer = PositionEmbedding()
    concat = PositionEmbedding(8, mode="concat", layout="interleaved")
    for length in (1, 7, 300):
        x = np.random.default_rng(length).normal(size=(2, length, 12)).astype("float32")
        table = np_(sinusoidal_position_embedding(length, 12))
        np.testing.assert_allclose(np_(layer(x)), x + table[None], atol=1e-6)
        out = np_(concat(x))
        assert out.shape == (2, length, 20)
        np.testing.assert_array_equal(out[..., :12], x)
        np.testing.assert_allclose(
            out[1, :, 12:], np_(sinusoidal_position_embedding(length, 8, "interleaved")), atol=1e-6
        )
    long = np_(sinusoidal_position_embedding(300, 12))
    np.testing.assert_allclose(long[:7], np_(sinusoidal_position_embedding(7, 12)), atol=1e-6)


@pytest.mark.layers
def test_position_embeddings_pass_the_mask_through():
    tokens = np.array([[0, 3, 4], [5, 6, 0]], "int32")
    for pe in (PositionEmbedding(), TrainablePositionEmbedding(10)):
        x = keras.layers.Embedding(10, 4, mask_zero=True)
        inputs = keras.Input((None,), dtype="int32")
        h = pe(x(inputs))
        model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(h))
        emb = np_(pe(np_(x(tokens))))
        real = tokens != 0
        np.testing.assert_allclose(
            np_(model(tokens)), (emb * real[..., None]).sum(1) / real.sum(1, keepdims=True), atol=1e-6
        )


@pytest.mark.layers
def test_trainable_position_embedding_learns_and_checks_length():
    layer = TrainablePositionEmbedding(6, mode="sum", embeddings_initializer="random_normal")
    x = np.zeros((2, 4, 3), "float32")
    np.testing.assert_allclose(np_(layer(x)), np.broadcast_to(np_(layer.embeddings)[:4], (2, 4, 3)), atol=0)
    inputs = keras.Input((4, 3))
    model = keras.Model(inputs, keras.layers.Flatten()(TrainablePositionEmbedding(6)(inputs)))
    model.compile(keras.optimizers.SGD(3.0), "mse")
    target = np.repeat(np.random.default_rng(0).normal(size=(1, 12)), 2, axis=0).astype("float32")
    model.fit(x, target, epochs=30, verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), target, atol=1e-3)
    with pytest.raises(ValueError, match="exceed max_length=6"):
        TrainablePositionEmbedding(6)(np.zeros((1, 7, 3), "float32"))


# --------------------------------------------------------------------------------------------------
# Errors, saving, XLA, copying the file alone


@pytest.mark.layers
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Attention(0, 16), "heads must be a positive integer"),
        (lambda: Attention(8, 2.5), "size_per_head must be a positive integer"),
        (lambda: Attention(8, 16, dropout=1.0), r"dropout must be in \[0, 1\)"),
        (lambda: Attention(8, 16, fused="yes"), "fused must be None, True or False"),
        (lambda: Attention(2, 3)(np.zeros((2, 5), "float32")), r"must be \(batch, time, features\)"),
        (lambda: Attention(2, 3)([np.zeros((2, 5, 4), "float32")] * 4), "x, \\[q, v\\] or \\[q, k, v\\]"),
        (
            lambda: Attention(2, 3)(
                [np.zeros((2, 5, 4), "float32"), np.zeros((2, 6, 4), "float32"), np.zeros((2, 7, 4), "float32")]
            ),
            "keys and values must have the same length",
        ),
        (lambda: PositionEmbedding(mode="add"), "mode must be 'sum' or 'concat'"),
        (lambda: PositionEmbedding(mode="concat"), "needs a size"),
        (lambda: PositionEmbedding(layout="sin_cos"), "layout must be"),
        (lambda: PositionEmbedding()(np.zeros((1, 4, 5), "float32")), "size must be even"),
        (lambda: PositionEmbedding(6)(np.zeros((1, 4, 8), "float32")), r"needs size == the input's features \(8\)"),
        (lambda: TrainablePositionEmbedding(0), "max_length must be a positive integer"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.layers
def test_keras_save_and_load_round_trip(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50, (4, 9)).astype("int32")
    tokens[0, :3] = 0
    inputs = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(50, 16, mask_zero=True)(inputs)
    x = PositionEmbedding(layout="interleaved")(x)
    x = TrainablePositionEmbedding(32, size=8, mode="concat", embeddings_initializer="random_normal")(x)
    x = Attention(
        4,
        6,
        use_scale=True,
        output_dim=24,
        use_bias=True,
        dropout=0.1,
        causal=True,
        bias_initializer="random_normal",
        kernel_regularizer="l2",
    )(x)
    x = Attention(2, 5, fused=False)([x, x])
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(x))
    path = tmp_path / "attention.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np_(loaded(tokens)), np_(model(tokens)))
    att = [layer for layer in loaded.layers if isinstance(layer, Attention)]
    assert att[0].get_config()["causal"] and att[0].dropout == 0.1 and att[1].fused is False


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="jit_compile=True is the TensorFlow/XLA check (JAX always compiles)"
)
@pytest.mark.parametrize("fused", [True, False])
def test_trains_and_predicts_under_xla_jit_compile(fused):
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 30, (64, 12)).astype("int32")
    tokens[::2, :4] = 0
    labels = ((tokens > 15).sum(1) > (tokens > 0).sum(1) / 2).astype("float32")

    def build():
        inputs = keras.Input((12,), dtype="int32")
        x = keras.layers.Embedding(30, 16, mask_zero=True)(inputs)
        x = PositionEmbedding()(x)
        x = Attention(4, 8, use_scale=True, causal=True, dropout=0.1, fused=fused)(x)
        x = keras.layers.GlobalAveragePooling1D()(x)
        return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))

    keras.utils.set_random_seed(0)
    model = build()
    model.compile("adam", "binary_crossentropy", jit_compile=True)
    loss = model.fit(tokens, labels, epochs=30, batch_size=16, verbose=0).history["loss"]
    assert loss[-1] < 0.8 * loss[0]
    eager = build()
    eager.set_weights(model.get_weights())
    eager.compile(jit_compile=False)
    np.testing.assert_allclose(model.predict(tokens, verbose=0), eager.predict(tokens, verbose=0), atol=1e-5)


def test_layers_py_runs_copied_alone(tmp_path):
    script = (
        "import numpy as np, keras\n"
        "from layers import Attention, PositionEmbedding\n"
        "x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype('float32')\n"
        "y = Attention(2, 4, use_scale=True, causal=True)(PositionEmbedding()(x))\n"
        "print(tuple(y.shape))\n"
    )
    assert run_copied_alone(REPO / "attention" / "layers.py", script, tmp_path) == "(2, 5, 8)"


# --------------------------------------------------------------------------------------------------
# The experiment


@pytest.mark.data
def test_imdb_is_cut_and_padded_at_the_front_as_keras_does(require_data):
    require_data("imdb/imdb.npz")
    from attention import train

    (x, y), (x_test, y_test) = train.load_imdb(train_size=300, test_size=200)
    assert x.shape == (300, 80) and x_test.shape == (200, 80) and x.max() < train.NUM_WORDS
    from utils import data as datasets

    (raw, _), _ = datasets.imdb(num_words=train.NUM_WORDS)
    for i in range(300):
        review = raw[i]
        if len(review) >= 80:  # truncating="pre": the last 80 words are kept
            assert list(x[i]) == review[-80:]
        else:  # padding="pre": zeros first
            assert list(x[i]) == [0] * (80 - len(review)) + review
    assert set(np.unique(y)) <= {0.0, 1.0}


@pytest.mark.data
@pytest.mark.backends
def test_smoke_run_records_resumes_mid_seed_and_refuses_other_settings(
    require_data, tmp_path, capsys, kill_after_epoch
):
    """The script end to end on the current backend (512 reviews), then a seed killed after its first
    of two epochs that resumes at the second and records both epochs' history."""
    require_data("imdb/imdb.npz")
    from attention import train

    records = check_smoke_run(train, [], tmp_path, capsys, ["pe-smoke", "no_pe-smoke"])
    assert records[0]["metrics"]["params"] == 20000 * 128 + 3 * 128 * 128 + 129
    assert (tmp_path / "records" / "attention" / "val_acc-smoke.png").is_file()
    with pytest.raises(SystemExit, match="another setup"):
        train.main(["--smoke", "--epochs", "2", "--out", str(tmp_path / "records")])

    argv = ["--smoke", "--epochs", "2", "--variants", "pe_masked", "--out", str(tmp_path / "killed")]
    kill_after_epoch(1)
    with pytest.raises(Killed):
        train.main(argv)
    assert list((tmp_path / "killed" / ".checkpoints").rglob("seed0.npz"))
    capsys.readouterr()
    (record,) = train.main(argv)
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert len(record["history"]["val_accuracy"]) == 2 and len(record["history"]["epoch_time_s"]) == 2
    assert record["config"]["mask"] and not list((tmp_path / "killed" / ".checkpoints").rglob("*.npz"))


def test_claim_holds_on_the_reference_and_fails_when_reversed():
    from attention import train
    from utils import report, runs

    reference = runs.load_results(runs.REFERENCE, "attention")
    assert train.CLAIM.verdict(reference, "full") == report.REPRODUCED
    swap = {"pe": "no_pe", "no_pe": "pe"}
    swapped = [{**r, "experiment": swap.get(r["experiment"], r["experiment"])} for r in reference]
    assert train.CLAIM.verdict(swapped, "full") == report.NOT_REPRODUCED
