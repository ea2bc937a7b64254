"""poetry/: the gated CNN, the sequence loss, couplet extraction, the measures, the generator and its CLI."""

import json
import subprocess
import sys
from collections import Counter

import keras
import numpy as np
import pytest
from conftest import BACKEND, REPO, check_smoke_run, grad, run_copied_alone

from poetry import metrics
from poetry.generate import Poet, main, punctuate
from poetry.layers import GCNN, sequence_nll
from utils import data
from vae.layers import KLDivergence

np_ = keras.ops.convert_to_numpy


# --------------------------------------------------------------------------------------------------
# The gated CNN and the loss, against NumPy


def gcnn_numpy(x, kernel, residual):
    """float64 reference: 'same' 1-D convolution (zero padding), content * sigmoid(gate), + x."""
    x, kernel = x.astype("float64"), kernel.astype("float64")
    width, _, two_m = kernel.shape
    pad = width // 2
    padded = np.pad(x, ((0, 0), (pad, pad), (0, 0)))
    h = np.stack([np.einsum("bkc,kco->bo", padded[:, t : t + width], kernel) for t in range(x.shape[1])], axis=1)
    out = h[..., : two_m // 2] / (1.0 + np.exp(-h[..., two_m // 2 :]))
    return out + x if residual else out


@pytest.mark.layers
@pytest.mark.parametrize("residual, output_dim, width", [(True, None, 3), (False, 5, 3), (False, None, 5)])
def test_gcnn_matches_a_numpy_reference(residual, output_dim, width):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7, 4)).astype("float32")
    layer = GCNN(output_dim=output_dim, kernel_size=width, residual=residual)
    y = np_(layer(x))
    assert y.shape == (3, 7, output_dim or 4) and layer.kernel.shape == (width, 4, 2 * (output_dim or 4))
    assert np.allclose(y, gcnn_numpy(x, np_(layer.kernel), residual), atol=1e-5)
    if output_dim is None:  # the control: the residual is really added (or not)
        assert not np.allclose(y, gcnn_numpy(x, np_(layer.kernel), not residual), atol=1e-3)


@pytest.mark.layers
def test_gcnn_is_local_and_its_gradient_reaches_the_input():
    layer = GCNN(residual=False)
    x = np.random.default_rng(1).normal(size=(1, 9, 4)).astype("float32")
    changed = x.copy()
    changed[0, 0] += 5.0  # kernel 3: only positions 0 and 1 can see position 0
    diff = np.abs(np_(layer(changed)) - np_(layer(x))).sum(-1)[0]
    assert diff[:2].min() > 0 and np.all(diff[2:] == 0)
    g = grad(lambda v: layer(v)[:, 4], x)  # position 4 depends on inputs 3, 4 and 5 only
    assert np.abs(g[0, 3:6]).sum() > 0 and np.all(g[0, :3] == 0) and np.all(g[0, 6:] == 0)


@pytest.mark.layers
def test_sequence_nll_is_the_summed_cross_entropy_and_stays_finite_for_large_logits():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(4, 10, 30)).astype("float32") * 3
    ids = rng.integers(0, 30, size=(4, 10))
    log_p = logits.astype("float64") - np.log(np.exp(logits.astype("float64")).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_p, ids[..., None], -1)[..., 0].sum(-1)
    assert np.allclose(np_(sequence_nll(ids, logits)), expected, rtol=1e-5)
    # Keras's own loss on the softmax, summed over positions (the article's formula)
    probs = keras.ops.softmax(logits)
    keras_sum = np_(keras.ops.sum(keras.losses.sparse_categorical_crossentropy(ids, probs), axis=-1))
    assert np.allclose(np_(sequence_nll(ids, logits)), keras_sum, rtol=1e-4)
    big = np.zeros((1, 10, 30), "float32")
    big[..., 0] = 1e4  # a softmax of probabilities would give log(0) for every other id
    assert np.allclose(np_(sequence_nll(np.ones((1, 10), "int32"), big)), 10 * 1e4, rtol=1e-6)


@pytest.mark.layers
def test_an_id_outside_the_vocabulary_gives_nan_for_its_sample_only():
    logits = np.zeros((3, 10, 5), "float32")
    ids = np.zeros((3, 10), "int32")
    ids[1, 4] = 5
    ids[2, 0] = -1
    out = np_(sequence_nll(ids, logits))
    assert out[0] == pytest.approx(10 * np.log(5)) and np.isnan(out[1]) and np.isnan(out[2])


@pytest.mark.layers
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: GCNN(kernel_size=2), "kernel_size must be a positive odd int, got 2"),
        (lambda: GCNN(output_dim=0), "output_dim must be a positive int or None, got 0"),
        (lambda: GCNN(output_dim=8, residual=True)(np.zeros((1, 5, 4))), r"residual=True adds the input \(4 channels"),
        (lambda: GCNN()(np.zeros((2, 4))), r"expects inputs \(batch, length, channels\)"),
        (lambda: sequence_nll(np.zeros((2, 3, 1)), np.zeros((2, 3, 5))), r"expects ids \(batch, n\)"),
        (lambda: KLDivergence(free_bits=-0.5), "free_bits must be a finite float >= 0, got -0.5"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.layers
def test_free_bits_floor_each_dimensions_batch_mean_kl_and_the_weight_can_change():
    rng = np.random.default_rng(3)
    mean = rng.normal(size=(6, 4)).astype("float32") * [1.0, 0.05, 0.0, 2.0]
    log_var = np.zeros((6, 4), "float32")
    per_dim = (0.5 * (mean.astype("float64") ** 2)).mean(0)  # log_var 0: KL_i = mu_i^2 / 2
    for free_bits in (0.0, 0.3):
        layer = KLDivergence(free_bits=free_bits)
        layer([mean, log_var])
        assert float(np_(layer.losses[0])) == pytest.approx(np.maximum(per_dim, free_bits).sum(), rel=1e-5)
    layer.kl_weight.assign(0.25)  # what AnnealKL does during training
    layer([mean, log_var])
    assert float(np_(layer.losses[-1])) == pytest.approx(0.25 * np.maximum(per_dim, 0.3).sum(), rel=1e-5)
    restored = KLDivergence.from_config(layer.get_config())
    assert restored.free_bits == 0.3 and restored.weight == 1.0


@pytest.mark.layers
def test_keras_round_trip_of_a_model_with_gcnn(tmp_path):
    x = keras.Input((10,), dtype="int32")
    h = GCNN(residual=True)(keras.layers.Embedding(20, 8)(x))
    model = keras.Model(x, keras.layers.Dense(20)(GCNN(output_dim=6, kernel_size=5)(h)))
    model.compile("adam", loss=sequence_nll)
    ids = np.random.default_rng(4).integers(0, 20, size=(16, 10)).astype("int32")
    model.fit(ids, ids, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert np.allclose(np_(model(ids)), np_(loaded(ids)), atol=1e-6) and loaded.loss is sequence_nll
    assert loaded.layers[3].get_config()["kernel_size"] == 5 and loaded.layers[2].residual


@pytest.mark.layers
def test_the_readme_snippet_runs_as_pasted_with_layers_py_alone(tmp_path):
    readme = (REPO / "poetry" / "README.md").read_text(encoding="utf-8")
    snippet = readme.split("## Use the layers", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    last = run_copied_alone(REPO / "poetry" / "layers.py", snippet, tmp_path)
    assert last.startswith("loss ") and float(last.split()[1]) < float(last.split()[3]), last


# --------------------------------------------------------------------------------------------------
# Couplets, quatrains, the split, the vocabulary


POEM = {"paragraphs": ["秦川雄帝宅，函谷壮皇居。", "绮殿千寻起，离宫百雉余。"]}


@pytest.mark.parametrize(
    "poem, expected",
    [
        (POEM, ["秦川雄帝宅函谷壮皇居", "绮殿千寻起离宫百雉余"]),
        (
            "秦川雄帝宅，函谷壮皇居。绮殿千寻起？离宫百雉余。连甍遥接汉，飞观迥凌虚。",
            ["秦川雄帝宅函谷壮皇居", "连甍遥接汉飞观迥凌虚"],
        ),
        ("秦川雄帝宅，函谷壮皇居", []),  # no '。': the poem does not open with a couplet
        ("秦川雄帝宅。函谷壮皇居。", []),  # wrong punctuation
        ("床前明月光疑，是地上霜举头。", []),  # 6 + 6
        ("黄河远上白云间，一片孤城万仞山。", []),  # seven-character lines
        ("秦川雄帝宅，函谷壮皇居。绮殿千寻起，离宫百雉余，连甍遥接汉。", ["秦川雄帝宅函谷壮皇居"]),
        ("秦川雄帝宅，函谷壮皇居。绮殿a寻起，离宫百雉余。", ["秦川雄帝宅函谷壮皇居"]),  # not all Chinese
        ({"paragraphs": []}, []),
        ("", []),
    ],
)
def test_couplets_follow_the_articles_rule(poem, expected):
    assert data.couplets(poem) == expected


def test_quatrains_are_poems_of_exactly_four_five_character_lines():
    assert data.quatrain(POEM) == "秦川雄帝宅函谷壮皇居绮殿千寻起离宫百雉余"
    assert data.quatrain({"paragraphs": POEM["paragraphs"] * 2}) is None  # eight lines
    assert data.quatrain({"paragraphs": POEM["paragraphs"][:1]}) is None  # two lines
    assert data.quatrain("秦川雄帝宅，函谷壮皇居。绮殿千寻起，离宫百雉余") is None  # no final '。'
    assert data.quatrain("秦川雄帝宅，函谷壮皇居。绮殿千寻起？离宫百雉余。") is None


def test_the_split_holds_out_whole_poems_the_same_way_every_time():
    train, held = data.split_poems(1000, 0.05)
    assert len(held) == 50 and len(train) == 950 and not set(train) & set(held)
    assert sorted([*train, *held]) == list(range(1000))
    again_train, again_held = data.split_poems(1000, 0.05)
    assert np.array_equal(held, again_held) and not np.array_equal(held, data.split_poems(1000, 0.05, seed=1)[1])
    with pytest.raises(ValueError, match=r"heldout must be a fraction in \(0, 1\), got 0"):
        data.split_poems(10, 0)
    with pytest.raises(ValueError, match="holding out 0.05 of 8 poems leaves nothing held out"):
        data.split_poems(8, 0.05)


def test_five_character_lines_of_any_poem():
    text = "秦川雄帝宅，函谷壮皇居。黄河远上白云间，一片孤城万仞山？春眠不觉晓！"
    assert data.five_char_lines(text) == ["秦川雄帝宅", "函谷壮皇居", "春眠不觉晓"]


def test_vocabulary_is_by_frequency_after_unknown_and_unseen_characters_map_to_it():
    vocab = data.char_vocabulary(["春风春", "风雨春"])
    assert vocab == ["<unk>", "春", "风", "雨"]
    assert data.encode_chars(["春雨", "雪风"], vocab).tolist() == [[1, 3], [0, 2]]
    with pytest.raises(ValueError, match=r"one length, got lengths \[1, 2\]"):
        data.encode_chars(["春", "春风"], vocab)


# --------------------------------------------------------------------------------------------------
# The measures, on examples with known answers

# Tones of a hand-made table: 平 for these, 仄 for those, both for 看.
LEVEL_CHARS, OBLIQUE_CHARS = "山河城春深空新天来秋", "国破在草木雨后气晚"
TABLE = metrics.Prosody(
    {
        **{ch: Counter({"平": 9, "仄": 1}) for ch in LEVEL_CHARS},
        **{ch: Counter({"平": 1, "仄": 9}) for ch in OBLIQUE_CHARS},
        "看": Counter({"平": 5, "仄": 5}),
    }
)


def test_tone_table_thresholds_and_the_modern_fallback():
    assert TABLE.tones("山") == {"平"} and TABLE.tones("国") == {"仄"} and TABLE.tones("看") == {"平", "仄"}
    assert metrics.Prosody({"离": Counter({"平": 84, "仄": 16})}).tones("离") == {"平"}  # 84% >= 80%
    assert metrics.Prosody({"长": Counter({"平": 70, "仄": 30})}).tones("长") == {"平", "仄"}
    # not in the table: the modern tone (pypinyin): 花 hua1 level, 月 yue4 oblique
    assert TABLE.tones("花") == {"平"} and TABLE.tones("月") == {"仄"}


@pytest.mark.parametrize(
    "text, conforms",
    [
        ("国破山河在城春草木深", True),  # 仄仄平平仄 / 平平仄仄平 (杜甫, 春望)
        ("空山新雨后天气晚来秋", True),  # 平平平仄仄 / 平仄仄平平 (王维, 山居秋暝)
        ("国破山河在城春草木在", False),  # the second line ends oblique
        ("城春草木在城春草木深", False),  # the lines are not opposed at position 2
        ("国破山草在城春草木深", False),  # line 1: positions 2 and 4 both oblique
        ("国看山河在城春草木深", True),  # 看 takes either tone
        ("国破山河在城春草木深国破山河在城春草木深", False),  # 粘 broken: line 3 must follow line 2
        ("国破山河在城春草木深城春草木在国破山河深", True),  # 仄仄平平仄 平平仄仄平 平平仄仄仄 仄仄平平平
        ("国破山河在城春草木深城春草木在国破山河在", False),  # only the 2nd couplet breaks: line 4 ends oblique
        ("国破山河在城春草木深城春草木深国破山河深", False),  # line 3 ends level (it must not rhyme)
    ],
)
def test_tone_rules_on_couplets_and_quatrains(text, conforms):
    assert TABLE.tone_conforms(text) is conforms


def test_rhyme_groups_follow_the_modern_table():
    rhymes = TABLE.rhymes
    assert rhymes("千山鸟飞绝万径人踪灭")  # jue / mie: 皆
    assert not rhymes("白日依山尽黄河入海流")  # jin / liu
    assert rhymes("春眠不觉晓处处闻啼鸟")  # xiao / niao: 豪
    assert TABLE.rhyme_group("知") == "支" and TABLE.rhyme_group("西") == "齐"  # zhi vs xi
    assert not rhymes("春眠不觉知处处闻啼西")
    assert rhymes("一二三四五六七八九乡一二三四五六七八九光")  # quatrain: lines 2 and 4, xiang / guang
    assert (
        rhymes("一二三四女六七八九西") and rhymes("一二三四军六七八九门") and rhymes("一二三四远六七八九山")
    )  # v, vn, van
    assert not rhymes("一二三四远六七八九军") and not rhymes("一二三四五六七八九乡一二三四五六七八九军")
    with pytest.raises(ValueError, match="expects 10 or 20 characters, got 9"):
        rhymes("春眠不觉晓处处闻啼")


def test_form_novelty_and_variety_shares():
    texts = [
        "春眠不觉晓处处闻啼鸟",
        "春眠不觉晓处处闻啼鸟",
        "春眠不觉晓处处闻啼",
        "春眠不觉a处处闻啼鸟",
        "<unk>不觉晓处处闻啼",
    ]
    assert metrics.well_formed(texts) == pytest.approx(2 / 5)
    assert metrics.well_formed(["<unk>觉晓处处闻啼", "春<unk>觉晓处处闻啼"], length=10, unknown="<unk>") == 0
    assert metrics.well_formed(["春眠觉晓处处闻啼乡里"], length=10) == 1
    assert metrics.distinct(texts) == pytest.approx(4 / 5)
    assert metrics.novel(["春眠不觉晓夜来风雨声", "白日依山尽黄河入海流"], {"春眠不觉晓"}) == 0.5
    scores = metrics.score(texts[:2], TABLE, set())
    assert scores["well_formed"] == 1 and scores["novel"] == 1 and scores["distinct"] == 0.5 and scores["rhyme"] == 1
    with pytest.raises(ValueError, match="no texts to score"):
        metrics.distinct([])
    with pytest.raises(TypeError, match="expects a list of strings, got str"):
        metrics.novel("春眠不觉晓处处闻啼鸟", set())


@pytest.mark.data
def test_corpus_tones_judge_famous_regulated_couplets(require_data):
    require_data("chinese_poetry/poet.tang.zhCN.tar.xz")
    prosody = metrics.Prosody.from_poems(data.tang_poems())
    assert prosody.tone_rate(["国破山河在城春草木深", "空山新雨后天气晚来秋", "海内存知己天涯若比邻"]) == 1.0
    assert prosody.tones("白") == {"仄"}  # an entering tone: modern bai2 would say level
    assert not prosody.tone_conforms("床前明月光疑是地上霜")  # a 古绝: 是 and 上 both oblique


# --------------------------------------------------------------------------------------------------
# Training, generating, the CLI


def synthetic_couplets(n, seed=0):
    """Couplets whose first line uses the first 6 characters and the second line the other 6: a
    structure an untrained generator does not have."""
    first, second = "山水云风花月", "城春草木深秋"
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(first), 5)) + "".join(rng.choice(list(second), 5)) for _ in range(n)]


def tiny_poet(train_epochs, seed=0):
    from poetry import train

    texts = synthetic_couplets(512, seed)
    vocab = data.char_vocabulary(texts)
    x = data.encode_chars(texts, vocab)
    vae, _, decoder = train.build_vae(len(vocab), 10, 8, 1, 1, 0.0, seed)
    vae.compile(keras.optimizers.Adam(0.01), loss=sequence_nll)
    if train_epochs:
        vae.fit(x, x, batch_size=64, epochs=train_epochs, verbose=0)
    return Poet(decoder, vocab)


@pytest.mark.layers
def test_generation_after_training_is_well_formed_and_learns_the_structure():
    keras.utils.set_random_seed(0)
    untrained, poet = tiny_poet(0), tiny_poet(6)
    for options in ({}, {"temperature": 1.0}, {"temperature": 0.7, "top_k": 3}):
        texts = poet.write(200, seed=1, **options)
        assert metrics.well_formed(texts) == 1.0 and "<unk>" not in "".join(texts)
    follows = lambda texts: np.mean(
        [set(t[:5]) <= set("山水云风花月") and set(t[5:]) <= set("城春草木深秋") for t in texts]
    )
    assert follows(poet.write(200, seed=1)) > 0.9 and follows(untrained.write(200, seed=1)) < 0.5
    assert poet.write(5, seed=3) == poet.write(5, seed=3) != poet.write(5, seed=4)


@pytest.mark.layers
def test_kl_annealing_raises_the_weight_with_the_steps_inside_fit():
    from poetry import train

    texts = synthetic_couplets(64)
    vocab = data.char_vocabulary(texts)
    x = data.encode_chars(texts, vocab)
    vae, _, _ = train.build_vae(len(vocab), 10, 4, 1, 1, 0.0, 0)
    vae.compile(keras.optimizers.Adam(), loss=sequence_nll, steps_per_execution=1)
    kl = vae.get_layer("kl")
    vae.fit(x, x, batch_size=8, epochs=1, verbose=0, callbacks=[train.AnnealKL(kl, 16)])
    assert float(np_(kl.kl_weight)) == pytest.approx(7 / 16)  # set before each of the 8 steps: 0/16 .. 7/16
    vae.fit(x, x, batch_size=8, epochs=2, verbose=0, callbacks=[train.AnnealKL(kl, 16)])
    assert float(np_(kl.kl_weight)) == 1.0  # step 16 onwards


def test_decoding_never_writes_unknown_and_top_k_restricts_the_draws():
    poet = Poet.__new__(Poet)
    poet.vocab = ["<unk>", "a", "b", "c"]
    logits = np.log(np.array([[[0.97, 0.01, 0.01, 0.01]]] * 400))
    assert poet.decode(logits) == ["a"] * 400  # <unk> is the argmax but never written
    draws = Counter(poet.decode(logits + np.log([1, 1, 3, 6]), 1.0, 2, np.random.default_rng(0)))
    assert set(draws) == {"b", "c"} and 0.55 < draws["c"] / 400 < 0.8  # 6 / (3 + 6) = 0.67
    cold = Counter(poet.decode(logits + np.log([1, 1, 3, 6]), 0.25, None, np.random.default_rng(0)))
    assert cold["c"] / 400 > 0.9  # (6/3)^4 = 16 to 1 against b: a low temperature sharpens
    assert poet.decode(logits + np.log([1, 1, 3, 6]), 1e-300) == ["c"] * 400  # no overflow, no <unk>
    ties = np.zeros((400, 1, 4))
    assert set(poet.decode(ties, 1.0, 1, np.random.default_rng(0))) == {"a"}  # top-1 of tied logits: one id


@pytest.mark.backends
def test_the_cli_prints_reproducible_couplets_and_refuses_bad_input(tmp_path, capsys):
    poet = tiny_poet(1)
    poet.save(tmp_path / "model")
    main([str(tmp_path / "model"), "-n", "3", "--seed", "5"])
    first = capsys.readouterr().out.splitlines()
    assert len(first) == 3 and all(len(line) == 12 and line[5] == "，" and line[11] == "。" for line in first)
    main([str(tmp_path / "model"), "--seed", "5", "-n", "3"])  # options in any order
    assert capsys.readouterr().out.splitlines() == first
    main([str(tmp_path / "model"), "-n", "2", "--temperature", "0.8", "--top-k", "4", "--plain"])
    assert [len(line) for line in capsys.readouterr().out.splitlines()] == [10, 10]
    for argv, message in (
        (["-n", "0"], "the number of poems must be 1 or more, got 0"),
        (["--temperature", "0"], "the temperature must be a finite number above 0, got 0.0"),
        (["--temperature", "-1"], "the temperature must be a finite number above 0, got -1.0"),
        (["--top-k", "5"], "top-k applies to sampling: give --temperature too"),
        (["--seed", "-2"], "--seed must be 0 or more, got -2"),
    ):
        with pytest.raises(SystemExit) as stop:
            main([str(tmp_path / "model"), *argv])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing")])
    assert f"{tmp_path / 'missing' / 'generator.keras'} not found" in capsys.readouterr().err
    (tmp_path / "model" / "generator.keras").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "model")])
    assert "generator.keras: not a readable Keras model" in capsys.readouterr().err
    poet.save(tmp_path / "other")
    (tmp_path / "other" / "vocab.json").write_text(json.dumps(["<unk>", "a"]), encoding="utf-8")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "other")])
    assert "generator.keras and vocab.json are from different models" in capsys.readouterr().err


@pytest.mark.skipif(BACKEND != "tensorflow", reason="one subprocess run is enough (the CLI's code is the same)")
def test_the_cli_runs_as_a_command_with_help(tmp_path):
    tiny_poet(0).save(tmp_path / "model")
    cmd = [sys.executable, str(REPO / "poetry" / "generate.py")]
    done = subprocess.run([*cmd, str(tmp_path / "model"), "-n", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 2, done.stderr[-2000:]
    help_text = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120).stdout
    assert "Examples:" in help_text and "--temperature" in help_text and "--top-k" in help_text


def test_punctuation_per_couplet():
    assert punctuate("国破山河在城春草木深") == "国破山河在，城春草木深。"
    assert punctuate("一二三四五六七八九十" * 2) == "一二三四五，六七八九十。一二三四五，六七八九十。"


@pytest.mark.data
@pytest.mark.backends
def test_smoke_run_records_resumes_and_refuses_other_settings(require_data, tmp_path, capsys):
    require_data("chinese_poetry/poet.tang.zhCN.tar.xz")
    from poetry import train

    records = check_smoke_run(train, [], tmp_path, capsys, ["article-smoke", "quatrain-smoke"])
    for record in records:
        m = record["metrics"]
        assert m["greedy_well_formed"] == 1.0 and m["sampled_well_formed"] == 1.0 and len(m["examples"]) == 10
        assert 0 <= m["heldout_recon_acc"] <= 1 and m["heldout_kl"] >= 0 and m["real_well_formed"] == 1.0
        assert (tmp_path / "records" / "models" / f"{record['experiment']}-seed0" / "generator.keras").is_file()
    assert len(records[0]["metrics"]["examples"][0]) == 12 and len(records[1]["metrics"]["examples"][0]) == 24
    with pytest.raises(SystemExit, match="another setup"):
        train.main(["--smoke", "--out", str(tmp_path / "records"), "--epochs", "2", "--variants", "article"])


@pytest.mark.data
def test_the_corpus_gives_the_documented_counts_and_no_held_out_text_is_in_training(require_data):
    require_data("chinese_poetry/poet.tang.zhCN.tar.xz")
    from poetry import train

    corpus = train.load_corpus("couplet")
    assert len(corpus["train"]) + len(corpus["heldout"]) + corpus["dropped"] == 153_294
    assert corpus["train"][0] == "秦川雄帝宅函谷壮皇居" and corpus["vocab"][0] == "<unk>"
    assert not set(corpus["heldout"]) & set(corpus["train"]) and corpus["dropped"] > 0
    assert {t[:5] for t in corpus["train"]} <= corpus["lines"] and len(corpus["lines"]) > len(corpus["train"])
    quatrains = train.load_corpus("quatrain")
    assert all(len(q) == 20 for q in quatrains["train"]) and 3_000 < len(quatrains["train"]) < 5_000


def test_claim_needs_well_formed_novel_distinct_couplets_and_a_model_better_than_frequencies():
    from poetry import train
    from utils import report

    good = {"sampled_well_formed": 1.0, "sampled_novel": 0.99, "sampled_distinct": 0.99, "heldout_neg_elbo": 68.0}
    record = {"experiment": "article", "metrics": {**good, "unigram_nll": 72.0, "greedy_distinct": 0.3}}
    assert train.CLAIM.verdict([record], "full") == report.REPRODUCED
    for key, bad in (("sampled_well_formed", 0.999), ("sampled_novel", 0.9), ("sampled_distinct", 0.9)):
        broken = {**record, "metrics": {**record["metrics"], key: bad}}
        assert train.CLAIM.verdict([broken], "full") == report.NOT_REPRODUCED
    untrained = {**record, "metrics": {**record["metrics"], "heldout_neg_elbo": 88.5}}  # log(7,000) x 10
    assert train.CLAIM.verdict([untrained], "full") == report.NOT_REPRODUCED


def test_frequency_baselines_against_a_hand_count():
    from poetry import train

    x = np.array([[1, 2], [1, 1]])
    held = np.array([[1, 2]])
    # overall: counts 1:3, 2:1 of 4 ids, vocabulary 3 (add one): p(1) = 4/7, p(2) = 2/7
    # by position: first p(1) = 3/5; second p(2) = 2/5
    out = train.frequency_baselines(x, held, 3)
    assert out["unigram_nll"] == pytest.approx(-np.log(4 / 7) - np.log(2 / 7))
    assert out["position_unigram_nll"] == pytest.approx(-np.log(3 / 5) - np.log(2 / 5))


def test_claim_holds_on_the_reference_and_fails_for_a_model_no_better_than_frequencies():
    from poetry import train
    from utils import report, runs

    reference = runs.load_results(runs.REFERENCE, "poetry")
    assert train.CLAIM.verdict(reference, "full") == report.REPRODUCED
    # the control: held-out -ELBO of the characters' frequencies in place of the model's
    swapped = [{**r, "metrics": {**r["metrics"], "heldout_neg_elbo": r["metrics"]["unigram_nll"]}} for r in reference]
    assert train.CLAIM.verdict(swapped, "full") == report.NOT_REPRODUCED
