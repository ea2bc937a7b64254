"""Word segmentation scores: the SIGHAN bakeoff's, and the article's own quick metric.

The bakeoff scorer (icwb2-data ``scripts/score``, Perl) aligns each line's system words with its gold
words by ``diff`` and counts the words the alignment matches. ``bakeoff_score`` counts a word correct
when a system word has exactly its character span, the definition the scorer's alignment implements
for a system that keeps the input's characters; the two can differ only where ``diff`` pairs a
repeated word with a copy at another position, which span matching does not credit. Lines with an
empty gold segmentation count nothing in either.

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
        gold, predicted: lists of sentences, each a list of words, line by line the same characters.
        training_words: the set of words seen in training (the bakeoff's ``*_training_words.utf8``).
    """
    if len(gold) != len(predicted):
        raise ValueError(f"bakeoff_score: {len(gold)} gold lines but {len(predicted)} predicted lines")
    correct = n_gold = n_pred = oov = oov_correct = iv_correct = 0
    for line, (g, p) in enumerate(zip(gold, predicted), start=1):
        if "".join(g) != "".join(p):
            raise ValueError(f"bakeoff_score: line {line}: the segmentation changed the text "
                             f"({''.join(g)[:30]!r} vs {''.join(p)[:30]!r})")
        predicted_spans = set(spans(p))
        n_gold += len(g)
        n_pred += len(p)
        for word, span in zip(g, spans(g)):
            hit = span in predicted_spans
            correct += hit
            if word in training_words:
                iv_correct += hit
            else:
                oov += 1
                oov_correct += hit
    precision = correct / n_pred if n_pred else 0.0
    recall = correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision, "recall": recall, "f1": f1,
        "oov_rate": oov / n_gold if n_gold else 0.0,
        "oov_recall": oov_correct / oov if oov else 0.0,
        "iv_recall": iv_correct / (n_gold - oov) if n_gold > oov else 0.0,
        "gold_words": n_gold, "predicted_words": n_pred,
    }


def word_set_score(gold, predicted):
    """The article's validation metric (word_seg.py): per sentence |set(gold) & set(predicted)|, summed,
    over the summed |set(gold)|. Its code comment warns that it may overestimate; it ignores where a
    word stands and counts repeated words once."""
    hits = total = 0
    for g, p in zip(gold, predicted):
        hits += len(set(g) & set(p))
        total += len(set(g))
    return hits / total if total else 0.0
