"""vlmcls.prompt: answers match a class exactly after normalising, and the question names the classes as spelled."""
import pytest

from vlmcls.prompt import classification_question, match_answer

SOLAR = ["Bird-drop", "Clean", "Dusty", "Electrical-damage", "Physical-Damage", "Snow-Covered"]


@pytest.mark.parametrize("answer, expected", [
    ("Bird-drop", "Bird-drop"), (" bird drop.", "Bird-drop"), ("BIRD_DROP", "Bird-drop"),
    ("'Snow-Covered'", "Snow-Covered"), ("snow  covered!", "Snow-Covered"), ("Physical-Damage", "Physical-Damage"),
    ("Bird", None), ("Bird-dropping", None), ("Clean panel", None), ("", None), ("Dust", None),
])
def test_match_answer_is_exact_after_normalising(answer, expected):
    assert match_answer(answer, SOLAR) == expected


def test_question_lists_the_classes_as_spelled():
    assert "Bird-drop, Clean, Dusty, Electrical-damage, Physical-Damage, Snow-Covered." in \
        classification_question(SOLAR)
