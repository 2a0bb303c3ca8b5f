"""raysimnpo.maths.metrics.text: ROUGE-L recall (TOFU) and F1 (MUSE) by hand."""

import numpy as np
import pytest

from raysimnpo.maths.metrics.text import rouge_l_f1, rouge_l_f1_batch, rouge_l_recall, rouge_l_recall_batch


def test_rouge_l_recall_and_f1_hand_values() -> None:
    # LCS("the cat sat", "the cat sat on the mat") = 3 tokens; reference has 6 -> recall 3/6 = 0.5;
    # precision 3/3 = 1 -> F1 = 2·1·0.5/(1 + 0.5) = 2/3.
    assert rouge_l_recall("the cat sat", "the cat sat on the mat") == pytest.approx(0.5)
    assert rouge_l_f1("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)


def test_stemming_and_case() -> None:
    # Porter stemming maps "cats" to "cat" and the tokenizer lower-cases "The": all 3 tokens match.
    assert rouge_l_recall("The cats sat", "the cat sat") == pytest.approx(1.0)


def test_lcs_is_a_subsequence_not_a_substring() -> None:
    # Prediction "a x b y c" vs reference "a b c": LCS = (a, b, c) = 3 -> recall 1; precision 3/5 -> F1 0.75.
    assert rouge_l_recall("a x b y c", "a b c") == pytest.approx(1.0)
    assert rouge_l_f1("a x b y c", "a b c") == pytest.approx(0.75)


def test_batches() -> None:
    preds, refs = ["the cat sat", "dog"], ["the cat sat on the mat", "cat"]
    np.testing.assert_allclose(rouge_l_recall_batch(preds, refs), [0.5, 0.0])
    np.testing.assert_allclose(rouge_l_f1_batch(preds, refs), [2 / 3, 0.0])
    with pytest.raises(ValueError, match="differ in length"):
        rouge_l_recall_batch(preds, refs[:1])
