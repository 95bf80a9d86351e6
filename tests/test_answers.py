"""Answers: the option letter in real-world multiple-choice answers (DeepSeek-R1's among them), and
references holding a worked solution cut to their final answer by `reference_pattern`."""
import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.scoring import extract, is_correct
from tests.conftest import write_config

CHOICES = [
    # explicit answer statements, markdown and LaTeX around them
    ("The correct answer is **A: 12 km/h**.", "A"),
    ("**Answer:** B", "B"),
    ("Final answer: **B**", "B"),
    ("Answer: (C)", "C"),
    ("Therefore, the answer is C.", "C"),
    ("The answer is *C*.", "C"),
    ("The answer is __D__", "D"),
    ("The answer is $B$.", "B"),
    ("The answer is option J.", "J"),
    ("The correct option is D.", "D"),
    ("Hence, answer = G", "G"),
    ("the answer is (b)", "B"),
    ("Answer: A", "A"),
    ("Answer: I", "I"),
    ("So the result is \\boxed{B}.", "B"),
    ("\\[\n\\boxed{\\text{B}}\n\\]", "B"),
    ("The answer is \\(\\boxed{\\textbf{(C)}}\\)", "C"),
    ("**Final Answer**\n\n\\boxed{E}", "E"),
    ("\\boxed{b}", "B"),
    # other languages, full-width forms
    ("答案：B", "B"),
    ("所以答案是 C。", "C"),
    ("综上所述，正确答案为 D", "D"),
    ("答案是Ｂ", "B"),
    ("答案选C", "C"),
    ("故选：A", "A"),
    ("选项B正确", "B"),
    ("সঠিক উত্তর: B", "B"),
    ("La respuesta correcta es B.", "B"),
    ("Die richtige Antwort ist D.", "D"),
    ("正解は C です。", "C"),
    ("정답은 (D)", "D"),
    # weaker statements, used when no explicit one is there
    ("(C) is correct because the others overcount.", "C"),
    ("B is the correct option, since 42 = 6 × 7.", "B"),
    ("After checking each choice:\n\nOption D", "D"),
    ("The remaining candidate is\n(C)", "C"),
    ("Which fits all the clues?\nC)", "C"),
    ("The closest value is\n\n**B. 42**", "B"),
    # the last explicit statement wins; letters named on the way do not
    ("I think A is wrong, so the answer is B.", "B"),
    ("So the answer is B.\nWait, let me double-check. Actually, the answer is C.", "C"),
    ("Answer choice A is incorrect; the answer is D", "D"),
    ("**Answer:** B\n\n**Explanation:** A is wrong, and D is correct only for n > 2.", "B"),
    ("<think>The answer is A... wait.</think>\n\nThe answer is D.", "D"),
    ("<think>Maybe the answer is B.</think>\n\n**Answer: C**\n\nC is the correct option.", "C"),
    # no answer: articles, pronouns, options only named, retractions, an answer only in the reasoning
    ("A train leaves the station at 3 pm; another leaves at 4 pm.", None),
    ("An apple a day.", None),
    ("A is wrong and so is B.", None),
    ("Options A and B are wrong; C", None),  # a letter trailing a sentence states nothing
    ("The answer is not A.", None),
    ("Answer: I think it is B", None),  # the pronoun I; "it is B" is no answer statement
    ("I am not sure which option fits.", None),
    ("Answer the question first: a train travels 60 km.", None),
    ("- **Option A**: too small.\n- **Option B**: too large.", None),
    ("The options are:\nA) 1\nB) 2\nC) 3", None),
    ("\\boxed{42}", None),
    ("<think>The answer is B.</think>", None),
]


@pytest.mark.parametrize("text, letter", CHOICES, ids=[f"{i:02d}" for i in range(len(CHOICES))])
def test_choice_letter(text, letter):
    assert extract(text, "choice") == letter
    assert is_correct(extract(text, "choice"), f"({letter or 'A'})", "choice") is (letter is not None)


# ---------------------------------------------------------------------------------------------
# reference_pattern through `distill prepare`

GSM8K = [
    {"question": "Natalia sold clips to 48 friends in April, and half as many in May. How many in all?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
               "altogether in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour. She did 50 minutes of babysitting. How much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
               "$<<0.2*50=10>>10.\n#### 10"},
]


def _prepare(tmp_path, rows: list[dict], pattern: str, *args):
    (tmp_path / "gsm.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = write_config(tmp_path / "run.yaml", f"""
        run: {{name: t, artifacts_dir: {tmp_path / 'artifacts'}}}
        prepare:
          inputs:
            - path: {tmp_path / 'gsm.jsonl'}
              prompt: question
              reference: answer
              reference_pattern: '{pattern}'
        """)
    return CliRunner().invoke(main, ["prepare", str(cfg), *args])


def test_reference_pattern_keeps_the_final_answer(tmp_path):
    result = _prepare(tmp_path, GSM8K, "^#### (.+)$")
    assert result.exit_code == 0, result.output
    rows = pq.read_table(tmp_path / "artifacts/t/prepare/prompts.parquet").to_pylist()
    assert [r["reference"] for r in rows] == ["72", "10"]


def test_reference_not_matching_is_a_row_error(tmp_path):
    rows = [GSM8K[0], {"question": "How many?", "answer": "Forty-two, as worked out above."}]
    result = _prepare(tmp_path, rows, "#### (.+)$")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "gsm.jsonl:2:" in lines[0] and "'#### (.+)$'" in lines[0], result.output
    assert not (tmp_path / "artifacts/t/prepare").exists()

    result = _prepare(tmp_path, rows, "#### (.+)$", "--on-error", "skip")
    assert result.exit_code == 0 and "read 2, rejected 1" in result.output, result.output
    rejects = pq.read_table(tmp_path / "artifacts/t/prepare/rejects.parquet").to_pylist()
    assert [r["line"] for r in rejects] == [2] and "reference_pattern" in rejects[0]["reason"]


@pytest.mark.parametrize("pattern, why", [("#### (.+", "not a regular expression"),
                                          ("#### .+$", "exactly one (group), has 0"),
                                          ("(#+) (.+)$", "exactly one (group), has 2")])
def test_invalid_reference_pattern_fails_at_load(tmp_path, pattern, why):
    result = _prepare(tmp_path, GSM8K, pattern)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "prepare.inputs[0].reference_pattern" in lines[0] and why in lines[0], result.output
