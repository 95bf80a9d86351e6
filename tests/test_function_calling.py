"""The function-calling case: one renderer for every model (tools as signatures where a template
ignores them, the preset's system rule, a teacher-only context), the built-in vehicle task through
prepare, the invalid_call rule, and eval's per-class measures."""
import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from transformers import AutoTokenizer

from pipeline import eval as eval_stage
from pipeline import vehicle
from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.render import TeacherContext, render, teacher_context, with_context
from tests.conftest import write_config
from tests.test_clean import _prompt, _run, _sample

PROMPT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "I'm cold"}],
          "tools": vehicle.TOOLS_JSON}


def test_one_renderer_tools_system_rule_and_context(tiny_tokenizer_dir, student_tokenizer_dir):
    teacher, student = (AutoTokenizer.from_pretrained(d) for d in (tiny_tokenizer_dir, student_tokenizer_dir))
    text, ids = render(teacher, PROMPT, system_prompt=True)
    assert "set_temperature(zone: driver|passenger|rear|all" in text and "Be brief." in text  # the template ignores tools
    assert ids == teacher.encode(text, add_special_tokens=False)
    no_system, _ = render(teacher, PROMPT, system_prompt=False)  # R1's rule: no system prompt of the user's
    assert "Be brief." not in no_system and "set_fan_speed(level" in no_system
    context = TeacherContext(("Reply with JSON.",), (({"role": "user", "content": "fan to 3"}, {
        "role": "assistant", "content": '{"name": "set_fan_speed", "arguments": {"level": 3}}'}),))
    seen, _ = render(teacher, with_context(PROMPT, context), system_prompt=True)
    assert seen.index("Reply with JSON.") < seen.index("Be brief.") < seen.index("fan to 3") < seen.index("I'm cold")
    # a student with another tokenizer gets the same messages in its own template, and no context
    s_text, _ = render(student, PROMPT, system_prompt=True)
    assert s_text.startswith("<|start|>system") and "Be brief." in s_text and "set_window(" in s_text
    assert "fan to 3" not in s_text


def _pair(question: str, answer: str = "{}") -> tuple[dict, dict]:
    return {"role": "user", "content": question}, {"role": "assistant", "content": answer}


def test_teacher_examples_nearest_first_never_the_request_itself(tmp_path):
    pool = (_pair("open the sunroof"), _pair("set the fan to two"), _pair("close the sunroof"),
            _pair("hey car, open the sunroof"), _pair("把音量调到十"), _pair("call mom"))
    context = TeacherContext(("Reply with JSON.",), pool, per_request=2)
    request = {"messages": [{"role": "user", "content": "open the sunroof"}], "tools": None}
    seen = [m["content"] for m in with_context(request, context)["messages"]]
    # the two most alike, least alike first; the identical question is never shown
    assert seen == ["Reply with JSON.", "close the sunroof", "{}", "hey car, open the sunroof", "{}",
                    "open the sunroof"]
    chinese = {"messages": [{"role": "user", "content": "音量调到十五"}], "tools": None}
    assert with_context(chinese, context)["messages"][-2:][0]["content"] == "{}"
    assert with_context(chinese, context)["messages"][-3]["content"] == "把音量调到十"
    # no more examples than k: all of them, in the file's order
    assert [m["content"] for m in with_context(request, TeacherContext((), pool[:2], 2))["messages"]] == [
        "open the sunroof", "{}", "set the fan to two", "{}", "open the sunroof"]
    # a file must hold user/assistant pairs after its system messages
    bad = tmp_path / "ctx.json"
    bad.write_text(json.dumps([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]))
    with pytest.raises(PipelineError, match="user, assistant pairs"):
        teacher_context(str(bad))
    assert len(teacher_context("vehicle", per_request=4).examples) == 8 + vehicle.EXAMPLE_POOL


def test_vehicle_task_through_prepare(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", f"""
        run: {{name: v, artifacts_dir: {tmp_path / 'artifacts'}}}
        prepare: {{vehicle: {{n_train: 40, n_eval: 14, seed: 3}}}}
        """)
    r = CliRunner().invoke(main, ["prepare", str(cfg)])
    assert r.exit_code == 0, r.output
    rows = pq.read_table(tmp_path / "artifacts/v/prepare/prompts.parquet").to_pylist()
    assert len(rows) == 54 and {r["task"] for r in rows} == {"tool"} and {r["language"] for r in rows} == {"en", "zh"}
    assert all(json.loads(r["tools"]) == vehicle.TOOLS for r in rows)
    assert any(r["reference"] == "[]" for r in rows if r["split"] == "eval")


def test_invalid_call_rule_drops_calls_that_break_the_schema(tmp_path):
    ok = '{"name": "set_fan_speed", "arguments": {"level": 3}}'
    prompts = [dict(_prompt("t", "fan to three", reference=ok), task="tool", tools=vehicle.TOOLS_JSON)]
    samples = [_sample("t", 0, "", answer=ok), _sample("t", 1, "", answer='{"name": "set_fan_speed", "arguments": {"level": 9}}'),
               _sample("t", 2, "", answer='{"name": "open_trunk", "arguments": {}}')]
    cfg_path, cfg = _run(tmp_path, extra="rules: [invalid_call, incorrect]", samples=samples, prompts=prompts)
    r = CliRunner().invoke(main, ["clean", str(cfg_path)])
    assert r.exit_code == 0, r.output
    rejects = {x["sample_id"]: x["rule"] for x in pq.read_table(cfg.run_dir / "clean/rejects.parquet").to_pylist()}
    assert rejects == {"t-1": "invalid_call", "t-2": "invalid_call"}
    verdicts = {v["sample_id"]: v for v in pq.read_table(cfg.run_dir / "clean/verdicts.parquet").to_pylist()}
    assert "level" in verdicts["t-1"]["invalid_call"] and verdicts["t-0"]["correct"]


def test_language_mix_does_not_judge_a_call_as_prose(tmp_path):
    # a call's JSON names are English whatever the user's language; prose in another script still goes
    call = '{"name": "set_fan_speed", "arguments": {"level": 3}}'
    prompts = [dict(_prompt("t", "把风量调到三档", reference=call), task="tool", tools=vehicle.TOOLS_JSON)]
    samples = [_sample("t", 0, "", answer=call), _sample("t", 1, "", answer="Sure, setting the fan speed for you now.")]
    cfg_path, cfg = _run(tmp_path, extra="rules: [language_mix]", samples=samples, prompts=prompts)
    r = CliRunner().invoke(main, ["clean", str(cfg_path)])
    assert r.exit_code == 0, r.output
    rejects = {x["sample_id"]: x["rule"] for x in pq.read_table(cfg.run_dir / "clean/rejects.parquet").to_pylist()}
    assert rejects == {"t-1": "language_mix"}


def test_tool_metrics_per_class_confusion_language_and_source():
    prompts = [{"prompt_id": str(i), "task": "tool", "source": "ab"[i // 2], "difficulty": 1, "language": lang,
                "reference": ref, "tools": vehicle.TOOLS_JSON}
               for i, (lang, ref) in enumerate([("en", '{"name": "set_fan_speed", "arguments": {"level": 3}}'),
                                                ("zh", '{"name": "set_volume", "arguments": {"level": 10}}'),
                                                ("en", "[]"), ("zh", '{"name": "set_fan_speed", "arguments": {"level": 2}}')])]
    outputs = ['{"name": "set_fan_speed", "arguments": {"level": 3}}',  # right
               '{"name": "set_fan_speed", "arguments": {"level": 10}}',  # wrong function
               "Happy to chat!",  # no_call, right
               '{"name": "set_fan_speed", "arguments": {"level": 5}}']  # right function, wrong value
    rows = eval_stage.score("student", prompts, [[(o, 10, "stop")] for o in outputs])
    m = eval_stage.tool_metrics(rows)
    assert m["exact_call_accuracy"] == 0.5 and m["name_accuracy"] == 0.75
    assert m["confusion"]["set_volume"]["set_fan_speed"] == 1 and m["confusion"]["no_call"]["no_call"] == 1
    fan = m["per_class"]["set_fan_speed"]
    assert fan["precision"] == round(2 / 3, 4) and fan["recall"] == 1.0 and fan["support"] == 2
    assert m["per_language"] == {"en": 1.0, "zh": 0.0} and m["per_source"] == {"a": 0.5, "b": 0.5}
    # right: 1 tp; wrong function: its argument fp, the expected one fn; wrong value: fp
    assert (m["arg_precision"], m["arg_recall"]) == (round(1 / 3, 4), 0.5)


def test_report_headline_names_the_share_speed_size_and_each_eval_half():
    from pipeline import report

    def model(exact, p50, size, halves):
        return {"exact_call_accuracy": exact, "latency_p50_s": p50, "size_mb": size,
                "per_source": dict(zip(("vehicle/new-wording", "vehicle/new-values"), halves))}

    summary = {"teacher": model(0.1, 1.0, 256, (0.1, 0.1)), "teacher_context": model(0.4, 0.8, 256, (0.3, 0.5)),
               "baseline": model(0.125, 0.5, 128, (0.1, 0.15)), "student": model(0.5, 0.2, 128, (0.25, 0.75))}
    text = report._headline({"eval": {"summary": summary}})
    assert "recovers 125% of the teacher's exact-call accuracy" in text
    assert "(0.50 vs 0.40 for the teacher with its worked examples on held-out requests; " \
           "new-wording 0.25 vs 0.30, new-values 0.75 vs 0.50; baseline 0.12)" in text
    assert "at 4.0 times its speed (median latency) and 2.0 times smaller" in text
