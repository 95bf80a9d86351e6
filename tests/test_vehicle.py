"""The built-in vehicle-control task: seeded rows, an eval split of unseen wordings and of held-out
values, references valid under TOOLS, numbers said in words, and a TOOLS list small enough for the
student's context."""
from __future__ import annotations

import json
import random
import re
from collections import Counter

import jsonschema
import pytest

from pipeline import vehicle

SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in vehicle.TOOLS}
KEYS = {"id", "question", "reference", "tools", "language", "class", "difficulty", "source"}


def _validate(call: dict) -> None:
    assert set(call) == {"name", "arguments"}
    jsonschema.validate(call["arguments"], SCHEMAS[call["name"]])


def _matches(text: str, pattern: str) -> bool:
    """Whether `text` is `pattern` with its slots filled (after any wake phrase, any capitalization)."""
    body = ".+".join(re.escape(part) for part in re.split(r"\{\w+\}", pattern))
    return re.fullmatch(f".*?{body}", text, re.IGNORECASE | re.DOTALL) is not None


def _patterns(split: str) -> list[str]:
    return [p for cls in vehicle.TEMPLATES for lang in vehicle.LANGUAGES
            for p, _ in vehicle.templates(cls, lang, split)]


def _renders(times: int) -> list[tuple[str, str, str, str, dict]]:
    """(class, pattern, language, question, arguments) for every call template, rendered `times` times."""
    rng = random.Random(0)
    return [(cls, pattern, lang, *vehicle.render(pattern, fixed, lang, rng)[:2])
            for cls in vehicle.FUNCTIONS for lang in vehicle.LANGUAGES for split in ("train", "eval")
            for pattern, fixed in vehicle.templates(cls, lang, split) for _ in range(times)]


def test_same_seed_same_rows():
    assert vehicle.splits(150, 60, seed=5) == vehicle.splits(150, 60, seed=5)
    assert vehicle.splits(150, 60, seed=5) != vehicle.splits(150, 60, seed=6)


def test_templates_of_train_and_eval_are_disjoint():
    for cls in vehicle.TEMPLATES:
        for lang in vehicle.LANGUAGES:
            assert vehicle.templates(cls, lang, "train") and vehicle.templates(cls, lang, "eval"), (cls, lang)
    assert not set(_patterns("train")) & set(_patterns("eval"))


def test_rows_of_train_and_eval_are_disjoint():
    train = vehicle.generate(600, "train", seed=0, keep=lambda c: not vehicle.held_out(c))
    new_wording = vehicle.generate(300, "eval", seed=1)
    new_values = vehicle.generate(300, "train", seed=2, keep=vehicle.held_out)
    assert not {d.pattern for d in train} & {d.pattern for d in new_wording}
    assert {d.pattern for d in new_values} <= {p for p in _patterns("train")}
    # a held-out request is one train never had: the same template, but other values in its slots
    assert not {d.combination for d in train} & {d.combination for d in new_values}
    assert all(d.combination[1] for d in new_values)
    s = vehicle.splits(600, 300, seed=0)
    questions = [r["question"] for r in s["train"]], [r["question"] for r in s["eval"]]
    assert len(set(questions[0])) == 600 and len(set(questions[1])) == 300
    assert not set(questions[0]) & set(questions[1])
    assert len({r["id"] for r in s["train"] + s["eval"]}) == 900
    assert Counter(r["source"] for r in s["eval"]) == {vehicle.NEW_WORDING: 150, vehicle.NEW_VALUES: 150}


def test_held_out_values_do_not_depend_on_the_seed_or_the_train_size():
    def combinations(n_train, seed):
        return {tuple(sorted(r.items())) for r in vehicle.splits(n_train, 40, seed)["eval"]
                if r["source"] == vehicle.NEW_VALUES}

    assert combinations(100, 0) == combinations(1000, 0)
    assert combinations(100, 0) != combinations(100, 1)  # another sample, of the same held-out share
    held = [vehicle.held_out((p, (("fan", n),))) for p, _ in vehicle.templates("set_fan_speed", "en", "train")
            if "{fan}" in p for n in range(8)]
    assert 0 < sum(held) < len(held)
    assert not vehicle.held_out(("I'm cold", ()))  # a wording with no slots has no other values to hold out


@pytest.mark.parametrize("split,source", [("train", "vehicle"), ("eval", vehicle.NEW_WORDING),
                                          ("eval", vehicle.NEW_VALUES)])
def test_languages_and_classes_in_proportion(split, source):
    rows = [r for r in vehicle.splits(700, 350, seed=2)[split] if r["source"] == source]
    assert all(set(r) == KEYS for r in rows)
    languages, classes = Counter(r["language"] for r in rows), Counter(r["class"] for r in rows)
    assert set(languages) == {"en", "zh"} and abs(languages["en"] - languages["zh"]) <= 1
    assert 0.10 <= classes.pop("no_call") / len(rows) <= 0.20
    assert set(classes) == set(vehicle.FUNCTIONS) and max(classes.values()) - min(classes.values()) <= 1
    no_call = Counter(r["language"] for r in rows if r["class"] == "no_call")
    assert no_call["en"] > 0 and no_call["zh"] > 0
    assert {r["difficulty"] for r in rows} == {0, 1, 2, 3}


def test_every_reference_is_a_valid_call_or_no_call():
    for schema in SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    rows = [r for rows in vehicle.splits(700, 350, seed=3).values() for r in rows]
    for r in rows:
        call = json.loads(r["reference"])
        assert r["tools"] == vehicle.TOOLS_JSON and json.loads(r["tools"]) == vehicle.TOOLS
        if r["class"] == "no_call":
            assert call == [] and r["difficulty"] == 0
        else:
            _validate(call)
            assert call["name"] == r["class"] and r["difficulty"] == len(call["arguments"]) in (1, 2, 3)


def test_every_template_renders_a_valid_call():
    for cls, _, _, _, args in _renders(3):
        _validate({"name": cls, "arguments": args})


def test_numbers_in_words():
    assert [vehicle.words(n, "en") for n in (0, 7, 13, 22, 30, 100)] == [
        "zero", "seven", "thirteen", "twenty-two", "thirty", "one hundred"]
    assert [vehicle.words(n, "zh") for n in (0, 7, 10, 13, 22, 30, 100)] == [
        "零", "七", "十", "十三", "二十二", "三十", "一百"]
    renders = _renders(60)
    # No function has two numeric arguments, so a phrase's number is the call's only numeric value.
    spot = {"twenty-two degrees": 22, "二十二度": 22, "half way": 50, "一半": 50, "a quarter of the way": 25,
            "三成": 30, "百分之七十五": 75, "eighty percent": 80, "fan to level three": 3, "七档": 7}
    for phrase, value in spot.items():
        hits = [[v for v in args.values() if type(v) in (int, float)] for *_, question, args in renders
                if phrase in question]
        assert hits and all(numbers == [value] for numbers in hits), phrase


def test_said_numbers_are_the_arguments():
    slots = {"{celsius}": "celsius", "{fan}": "level", "{volume}": "level", "{seat_level}": "level"}
    for _, pattern, lang, question, args in _renders(10):
        for slot, arg in slots.items():
            if slot in pattern:
                said = (str(args[arg]), vehicle.words(args[arg], lang))
                assert any(s in question for s in said), (question, args)


def test_tools_fit_the_students_context():
    assert len(json.dumps(vehicle.TOOLS, separators=(",", ":"))) < 2500
    assert len(set(vehicle.FUNCTIONS)) == len(vehicle.FUNCTIONS) >= 10


def test_teacher_context_comes_from_train_templates_only():
    messages = vehicle.TEACHER_CONTEXT
    assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
    assert len(messages) // 2 == 8 + vehicle.EXAMPLE_POOL
    examples = list(zip(messages[::2], messages[1::2]))
    evals = vehicle.splits(0, 500, seed=0)["eval"]
    eval_questions = {r["question"] for r in evals}
    # nor does a held-out request repeat a hand-written example under a wake phrase
    for text, _ in vehicle._EXAMPLES:
        assert not any(r["question"].lower().endswith(text.lower()) for r in evals), text
    train, evals = _patterns("train"), _patterns("eval")
    languages = set()
    for question, answer in examples:
        text = question["content"]
        languages.add("zh" if re.search(r"[\u4e00-\u9fff]", text) else "en")
        assert text not in eval_questions
        # the pool is drawn by generate(..., "train"); the hand-written eight are checked by pattern
        assert any(_matches(text, p) for p in train), text
        if examples.index((question, answer)) < 8:
            assert not any(_matches(text, p) for p in evals), text
        if answer["content"].startswith("{"):
            _validate(json.loads(answer["content"]))
    assert languages == {"en", "zh"}
    assert any(not a["content"].startswith("{") for _, a in examples)  # a no_call example answers in words
    assert "JSON" in vehicle.SYSTEM_PROMPT


def test_too_many_rows_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer rows"):
        vehicle.generate(20_000, "eval", seed=0)
