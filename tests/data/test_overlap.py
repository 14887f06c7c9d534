"""Lexical overlap thirds (toolchain/data/overlap.py) on real SQuAD dev questions."""

import numpy as np

from toolchain.data import squad
from toolchain.data.overlap import answer_sentence, content_words, f1_by_third, overlap_share, overlap_thirds


def test_the_answer_sentence_holds_the_answer(squad_dir):
    examples = squad.load_squad("dev", limit=300)
    for e in examples:
        sentence = answer_sentence(e)
        assert e.answers[0] in sentence, e.id  # 'C. J. Anderson' spans two split pieces: both are its sentence
    assert "Running back C. J. Anderson" in answer_sentence(next(e for e in examples if e.answers[0] == "C. J. Anderson"))


def test_share_counts_the_question_words_the_sentence_repeats(squad_dir):
    first = squad.load_squad("dev", limit=1)[0]  # "Which NFL team represented the AFC at Super Bowl 50?"
    assert content_words(first.question) == {"nfl", "team", "represented", "afc", "super", "bowl", "50"}
    assert "(AFC) champion Denver Broncos" in answer_sentence(first)
    # afc, super, bowl: the sentence says "their third Super Bowl title" and never "NFL" or "50"
    assert overlap_share(first) == 3 / 7


def test_thirds_are_equal_parts_ordered_by_share(squad_dir):
    examples = squad.load_squad("dev", limit=301)
    third, cuts = overlap_thirds(examples)
    shares = np.asarray([overlap_share(e) for e in examples])
    assert sorted(np.bincount(third).tolist()) == [100, 100, 101]
    for low, high in ((0, 1), (1, 2)):
        assert shares[third == low].max() <= shares[third == high].min()
    assert cuts == sorted(cuts) and cuts[0] == shares[third == 1].min()
    scores = f1_by_third(np.where(third == 2, 1.0, 0.0), third)
    assert scores == {"low": 0.0, "middle": 0.0, "high": 100.0}
