"""How good generated couplets are: form, novelty, variety, tones and rhyme.

Every measure takes a list of texts without punctuation: 10 characters for a couplet (two lines of 5),
20 for a quatrain (four lines of 5), and returns a share in [0, 1].

- ``well_formed``: the right length, CJK characters only (U+4E00..U+9FFF), no ``<unk>``.
- ``novel``: no line of the text is a line of the training corpus.
- ``distinct``: distinct texts / texts.
- ``tone_conforms``: the regulated-verse (近体诗) tone rules, at the positions that bind them.
  A five-character regulated line is one of four patterns, 仄仄平平仄, 平平仄仄平, 平平平仄仄 or
  仄仄仄平平, and a couplet pairs them so that the lines are opposed (对). At positions 2, 4 and 5
  (the 1st and 3rd are free: 一三不论) that comes to three rules: in each line the 2nd and 4th
  characters differ in tone (二四分明); the two lines differ at the 2nd (对); the second line ends on
  a level tone (平, the rhyme). A quatrain also needs its 3rd line to follow the 2nd at position 2
  (粘) and to end oblique (it does not rhyme). A character read in both tones may take either; 孤平
  and whether the first line rhymes are not judged.
- ``rhymes``: the line ends of a couplet (the 5th and 10th characters), or of a quatrain's 2nd and
  4th lines, fall in the same rhyme group.

Tones (``Prosody.tones``). The corpus gives each line's tone pattern (``strains``: 平, 仄, or ○ where
its editors left the character open). A character is 平 when at least 80% of the corpus's 平/仄 marks
for it say 平, 仄 when at most 20% do, and either tone in between (characters with two readings, such
as 看, 听, 长). A character the corpus never marks falls back on its modern Mandarin tone from
``pypinyin`` (tones 1 and 2 are 平, 3 and 4 仄; no tone: either). Modern tones misplace the entering
tone (入声), which Mandarin spread over all four tones; the corpus covers all but a few rare
characters, so the fallback decides little.

Rhyme groups (``Prosody.rhyme_group``). The final of the character's commonest modern reading
(``pypinyin``, without tone), mapped to the 14 groups of 中华新韵 (the modern rhyme table of the
China Poetry Society, 2005): 麻 a ia ua; 波 o e uo; 皆 ie üe; 开 ai uai; 微 ei ui; 豪 ao iao; 尤 ou
iu; 寒 an ian uan üan; 文 en in un ün; 唐 ang iang uang; 庚 eng ing ong iong; 齐 i er ü; 支 the -i of
zhi chi shi ri zi ci si; 姑 u. Tang poets rhymed by the rhymes of their own time (平水韵 is its later
summary), which modern readings blur; so the score means most next to the same score of real Tang
couplets (``poetry/train.py`` reports both).
"""

import functools
import itertools
import re
from collections import Counter

LEVEL, OBLIQUE = "平", "仄"
EITHER = frozenset((LEVEL, OBLIQUE))
_HAN = re.compile("^[\u4e00-\u9fff]+$")

_RHYME_GROUPS = {
    "麻": ("a", "ia", "ua"),
    "波": ("o", "e", "uo"),
    "皆": ("ie", "ve", "ue"),
    "开": ("ai", "uai"),
    "微": ("ei", "ui", "uei"),
    "豪": ("ao", "iao"),
    "尤": ("ou", "iu", "iou"),
    "寒": ("an", "ian", "uan", "van"),
    "文": ("en", "in", "un", "uen", "vn"),
    "唐": ("ang", "iang", "uang"),
    "庚": ("eng", "ing", "ong", "iong", "ueng"),
    "齐": ("i", "er", "v"),
    "姑": ("u",),
}
_FINAL_GROUP = {final: group for group, finals in _RHYME_GROUPS.items() for final in finals}
_BUZZ_INITIALS = ("zh", "ch", "sh", "r", "z", "c", "s")  # their "i" is the apical vowel: group 支


def _check_texts(texts, name):
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"{name}: expects a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError(f"{name}: no texts to score (an empty list has no share)")


def lines(text):
    """The five-character lines of a text (10 or 20 characters)."""
    return [text[i : i + 5] for i in range(0, len(text), 5)]


def well_formed(texts, length=10, unknown="<unk>"):
    """Share of texts of exactly ``length`` CJK characters with no ``unknown`` token."""
    _check_texts(texts, "well_formed")
    return sum(len(t) == length and unknown not in t and bool(_HAN.match(t)) for t in texts) / len(texts)


def novel(texts, training_lines):
    """Share of texts none of whose five-character lines is in ``training_lines`` (a set)."""
    _check_texts(texts, "novel")
    return sum(not any(line in training_lines for line in lines(t)) for t in texts) / len(texts)


def distinct(texts):
    """Distinct texts / texts."""
    _check_texts(texts, "distinct")
    return len(set(texts)) / len(texts)


class Prosody:
    """Each character's tone and rhyme group (the rules are in the module docstring).

    Args:
        tone_counts: ``{character: Counter({"平": n, "仄": m})}``, e.g. from ``from_poems``.
    """

    def __init__(self, tone_counts):
        self.tone_counts = tone_counts

    @classmethod
    def from_poems(cls, poems):
        """Count each character's 平 and 仄 marks in the ``strains`` of ``poems`` (dicts as
        ``utils.data.tang_poems`` gives them). A line whose pattern is not as long as its text is
        skipped (the corpus has some: a pattern cannot be aligned with its characters)."""
        counts = {}
        for poem in poems:
            for text, pattern in zip(poem["paragraphs"], poem.get("strains", ())):
                if len(text) != len(pattern):
                    continue
                for ch, mark in zip(text, pattern):
                    if mark in (LEVEL, OBLIQUE):
                        counts.setdefault(ch, Counter())[mark] += 1
        return cls(counts)

    @functools.cache  # noqa: B019  (one table per run; the cache lives as long)
    def tones(self, ch):
        """The tones ``ch`` may take: {平}, {仄} or both."""
        count = self.tone_counts.get(ch)
        if count and (total := count[LEVEL] + count[OBLIQUE]):
            share = count[LEVEL] / total
            return frozenset((LEVEL,)) if share >= 0.8 else frozenset((OBLIQUE,)) if share <= 0.2 else EITHER
        return _modern_tone(ch)

    @functools.cache  # noqa: B019
    def rhyme_group(self, ch):
        """The 中华新韵 group of ``ch``'s commonest reading, or None when pypinyin has no reading."""
        from pypinyin import Style, lazy_pinyin

        final = lazy_pinyin(ch, style=Style.FINALS, strict=True)[0]
        initial = lazy_pinyin(ch, style=Style.INITIALS, strict=True)[0]
        if final == "i" and initial in _BUZZ_INITIALS:
            return "支"
        return _FINAL_GROUP.get(final)

    def tone_conforms(self, text):
        """True when some choice of tones for the two-tone characters satisfies the regulated-verse
        rules (module docstring) for this couplet (10 characters) or quatrain (20)."""
        if len(text) not in (10, 20):
            raise ValueError(f"tone_conforms: expects 10 or 20 characters, got {len(text)} ({text!r})")
        verse = lines(text)
        # only positions 2, 4 and 5 of each line are judged
        options = [self.tones(line[i]) for line in verse for i in (1, 3, 4)]
        for choice in itertools.product(*options):
            pos2, pos4, pos5 = choice[0::3], choice[1::3], choice[2::3]
            ok = all(a != b for a, b in zip(pos2, pos4))  # 二四分明
            ok = ok and all(pos2[i] != pos2[i + 1] and pos5[i + 1] == LEVEL for i in (0, 2)[: len(verse) // 2])
            if len(verse) == 4:  # 粘: the 3rd line follows the 2nd; it does not rhyme, so it ends oblique
                ok = ok and pos2[2] == pos2[1] and pos5[2] == OBLIQUE
            if ok:
                return True
        return False

    def rhymes(self, text):
        """True when the couplet's two line ends (or the quatrain's 2nd and 4th) share a rhyme group."""
        if len(text) not in (10, 20):
            raise ValueError(f"rhymes: expects 10 or 20 characters, got {len(text)} ({text!r})")
        a, b = (text[4], text[9]) if len(text) == 10 else (text[9], text[19])
        group = self.rhyme_group(a)
        return group is not None and group == self.rhyme_group(b)

    def tone_rate(self, texts):
        """Share of texts whose tones conform (``tone_conforms``); texts of another length count as not."""
        _check_texts(texts, "tone_rate")
        return sum(_judgeable(t) and self.tone_conforms(t) for t in texts) / len(texts)

    def rhyme_rate(self, texts):
        """Share of texts whose line ends rhyme (``rhymes``)."""
        _check_texts(texts, "rhyme_rate")
        return sum(_judgeable(t) and self.rhymes(t) for t in texts) / len(texts)


def _judgeable(text):
    """A couplet or quatrain of CJK characters only: what the tone and rhyme rules can judge."""
    return len(text) in (10, 20) and _HAN.match(text) is not None


def _modern_tone(ch):
    from pypinyin import Style, lazy_pinyin

    reading = lazy_pinyin(ch, style=Style.TONE3, neutral_tone_with_five=True)[0]
    tone = reading[-1:] if reading[-1:].isdigit() and reading != ch else ""
    return frozenset((LEVEL,)) if tone in ("1", "2") else frozenset((OBLIQUE,)) if tone in ("3", "4") else EITHER


def score(texts, prosody, training_lines, length=10):
    """Every measure of ``texts``, as shares: ``well_formed``, ``novel``, ``distinct``, ``tone``,
    ``rhyme``."""
    return {
        "well_formed": well_formed(texts, length),
        "novel": novel(texts, training_lines),
        "distinct": distinct(texts),
        "tone": prosody.tone_rate(texts),
        "rhyme": prosody.rhyme_rate(texts),
    }
