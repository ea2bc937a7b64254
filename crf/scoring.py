"""Word segmentation scores: the SIGHAN bakeoff's, and the article's own quick metric.

The bakeoff scorer (icwb2-data ``scripts/score``, Perl) aligns each line's system words with its gold
words by ``diff`` and counts the words the alignment matches. ``bakeoff_score`` counts a word correct
when a system word has exactly its character span, the definition the scorer's alignment implements
for a system that keeps the input's characters; the two can differ only where ``diff`` pairs a
repeated word with a copy at another position, which span matching does not credit, and on the
16 MSR test lines whose gold line ends differ from the test input's (see ``bakeoff_score``). Lines
with an empty gold segmentation count nothing in either.

    precision = correct / system words     recall = correct / gold words     F1 = 2PR / (P + R)
    OOV recall = recall over gold words that are not in the training-word list, IV recall over the rest.
"""


def spans(words):
    """Words as (start, end) character offsets: ["中国", "人"] -> {(0, 2), (2, 3)}."""
    out, start = [], 0
    for word in words:
        out.append((start, start + len(word)))
        start += len(word)
    return out


def bakeoff_score(gold, predicted, training_words):
    """P, R, F1, OOV rate, OOV recall and IV recall over a corpus.

    Args:
        gold, predicted: lists of sentences, each a list of words; the same number of lines and,
            joined, the same characters.
        training_words: the set of words seen in training (the bakeoff's ``*_training_words.utf8``).

    Spans are taken over the whole text, not line by line: the MSR gold moves an opening quote “ to
    the end of the line before it on 16 lines of its test set (same characters, other line ends), and
    such a quote is credited when the system cuts it off as the gold does.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"bakeoff_score: {len(gold)} gold lines but {len(predicted)} predicted lines")
    gold_text, predicted_text = "".join(w for g in gold for w in g), "".join(w for p in predicted for w in p)
    if gold_text != predicted_text:
        at = next(
            (i for i, (a, b) in enumerate(zip(gold_text, predicted_text)) if a != b),
            min(len(gold_text), len(predicted_text)),
        )
        raise ValueError(
            f"bakeoff_score: the segmentation changed the text at gold line {_line_of(gold, at)}, "
            f"predicted line {_line_of(predicted, at)} "
            f"({gold_text[at : at + 20]!r} vs {predicted_text[at : at + 20]!r})"
        )
    gold_words = [w for g in gold for w in g]
    predicted_spans = set(spans(w for p in predicted for w in p))
    correct = oov = oov_correct = iv_correct = 0
    for word, span in zip(gold_words, spans(gold_words)):
        hit = span in predicted_spans
        correct += hit
        if word in training_words:
            iv_correct += hit
        else:
            oov += 1
            oov_correct += hit
    n_gold, n_pred = len(gold_words), sum(len(p) for p in predicted)
    precision = correct / n_pred if n_pred else 0.0
    recall = correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "oov_rate": oov / n_gold if n_gold else 0.0,
        "oov_recall": oov_correct / oov if oov else 0.0,
        "iv_recall": iv_correct / (n_gold - oov) if n_gold > oov else 0.0,
        "gold_words": n_gold,
        "predicted_words": n_pred,
    }


def _line_of(lines, offset):
    """1-based line of character ``offset`` in the joined text of ``lines`` (lists of words)."""
    for number, words in enumerate(lines, start=1):
        offset -= sum(len(w) for w in words)
        if offset < 0:
            return number
    return len(lines)


def word_set_score(gold, predicted):
    """The article's validation metric (word_seg.py): per sentence |set(gold) & set(predicted)|, summed,
    over the summed |set(gold)|. Its code comment warns that it may overestimate; it ignores where a
    word stands and counts repeated words once."""
    hits = total = 0
    for g, p in zip(gold, predicted):
        hits += len(set(g) & set(p))
        total += len(set(g))
    return hits / total if total else 0.0
