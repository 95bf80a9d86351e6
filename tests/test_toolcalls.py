"""Tool-call parsing and BFCL-style scoring: a table of outputs against references, plus references,
schema validation, entries in BFCL's own shape, and BFCL's files through `distill prepare`."""
import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline import rows, scoring
from pipeline.cli import main
from pipeline.toolcalls import Call, parse_calls, parse_reference, score, validate_call
from tests.conftest import write_config

TEMP = {"name": "set_temperature", "arguments": {"zone": "driver", "celsius": 21}}
# BFCL possible answer: alternatives per argument, "" = may be omitted
TEMP_PA = [{"set_temperature": {"zone": ["driver", "主驾"], "celsius": [21], "fan": ["", 3]}}]
CONTACT = {"name": "call_contact", "arguments": {"name": "Alice"}}
WEATHER_PAIR = [{"name": "get_weather", "arguments": {"city": "Paris"}},
                {"name": "get_weather", "arguments": {"city": "Tokyo"}}]
TEMP_AND_SEAT = [TEMP, {"name": "set_seat_heating", "arguments": {"seat": "driver", "level": 2}}]
MUSIC = {"name": "play_music", "arguments": {"songs": ["Yesterday", "Hey Jude"], "shuffle": True}}
SEAT = {"name": "set_seat_position", "arguments": {"position": {"height": 3, "recline": 10.5}}}
SEAT_PA = [{"set_seat_position": {"position": [{"height": [3], "recline": [10.5], "lumbar": ["", 1]}]}}]
ROUTE = {"name": "plan_route", "arguments": {"stops": [{"city": "Lyon", "nights": 2}, {"city": "Nice", "nights": 1}]}}
TEMP_JSON = '{"name": "set_temperature", "arguments": {"zone": "driver", "celsius": 21}}'


@pytest.mark.parametrize("text,reference,correct", [
    # formats of the output
    (TEMP_JSON, TEMP, True),
    ('{"name": "set_temperature", "parameters": {"zone": "driver", "celsius": 21}}', TEMP, True),
    ('{"name": "set_temperature", "arguments": "{\\"zone\\": \\"driver\\", \\"celsius\\": 21}"}', TEMP, True),
    ('{"type": "function", "function": {"name": "set_temperature", "arguments": "{\\"zone\\": \\"driver\\", '
     '\\"celsius\\": 21}"}}', TEMP, True),
    (f"[{TEMP_JSON}]", TEMP, True),
    (f"<tool_call>\n{TEMP_JSON}\n</tool_call>", TEMP, True),
    (f"Sure, setting it now.\n<tool_call>\n{TEMP_JSON}\n</tool_call>", TEMP, True),
    ('set_temperature(zone="driver", celsius=21)', TEMP, True),
    ('[set_temperature(zone="driver", celsius=21)]', TEMP, True),
    (f"```json\n{TEMP_JSON}\n```", TEMP, True),
    ('<think>maybe set_temperature(zone="rear", celsius=30)?</think>\n' + TEMP_JSON, TEMP, True),
    # values
    ('set_temperature(zone="driver", celsius=22)', TEMP, False),
    ('set_temperature(zone="driver", celsius=21.0)', TEMP, True),
    ('set_temperature(zone="driver", celsius=21.5)', TEMP, False),
    ('set_temperature(zone="driver", celsius="21")', TEMP, False),
    ('set_temperature(zone="Driver", celsius=21)', TEMP, True),
    ('set_temperature(zone="DRIVER ", celsius=21)', TEMP, True),
    ('set_temperature(zone="passenger", celsius=21)', TEMP, False),
    # required, optional and extra arguments
    ('set_temperature(celsius=21)', TEMP, False),
    ('set_temperature(zone="driver", celsius=21, fan=3)', TEMP, False),
    ('set_temperature(zone="driver", celsius=21)', TEMP_PA, True),
    ('set_temperature(zone="driver", celsius=21, fan=3)', TEMP_PA, True),
    ('set_temperature(zone="driver", celsius=21, fan=5)', TEMP_PA, False),
    ('set_temperature(zone="driver", celsius=21, mode="eco")', TEMP_PA, False),
    ('set_temperature(zone="主驾", celsius=21)', TEMP_PA, True),
    ('set_temperature(zone=" 主 驾 ", celsius=21)', TEMP_PA, True),
    ('set_temperature(zone="副驾", celsius=21)', TEMP_PA, False),
    ('set_temperature(zone="driver", celsius=21)', json.dumps(TEMP_PA, ensure_ascii=False), True),
    ('set_temperature(zone="driver", celsius=21)', {"id": "simple_7", "ground_truth": TEMP_PA}, True),
    # function names
    ('set_temp(zone="driver", celsius=21)', TEMP, False),
    ('Set_Temperature(zone="driver", celsius=21)', TEMP, False),
    ('vehicle_set_temperature(zone="driver")', [{"vehicle.set_temperature": {"zone": ["driver"]}}], True),
    ('vehicle.set_temperature(zone="driver")', [{"vehicle.set_temperature": {"zone": ["driver"]}}], True),
    # an argument called "name"
    ('{"name": "call_contact", "arguments": {"name": "Alice"}}', CONTACT, True),
    ('call_contact(name="alice")', CONTACT, True),
    ('{"name": "call_contact", "arguments": {"name": "Bob"}}', CONTACT, False),
    ('{"name": "Alice", "arguments": {}}', CONTACT, False),
    # one call expected: the first one made is the answer
    ('set_temperature(zone="driver", celsius=22)\n' + TEMP_JSON, TEMP, False),
    (TEMP_JSON + '\nget_weather(city="Paris")', TEMP, True),
    # parallel calls
    ('[get_weather(city="Paris"), get_weather(city="Tokyo")]', WEATHER_PAIR, True),
    ('[get_weather(city="Tokyo"), get_weather(city="Paris")]', WEATHER_PAIR, True),
    ('get_weather(city="Paris")', WEATHER_PAIR, False),
    ('[get_weather(city="Paris"), get_weather(city="Tokyo"), get_weather(city="Rome")]', WEATHER_PAIR, False),
    ('[get_weather(city="Paris"), get_weather(city="Paris")]', WEATHER_PAIR, False),
    ('<tool_call>{"name": "set_seat_heating", "arguments": {"seat": "driver", "level": 2}}</tool_call>\n'
     f"<tool_call>{TEMP_JSON}</tool_call>", TEMP_AND_SEAT, True),
    # no call expected
    ("It is already 21 degrees on the driver's side, nothing to change.", "no_call", True),
    ("", [], True),
    ("I'd rather not.", {"no_call": True}, True),
    (TEMP_JSON, "no_call", False),
    ("The temperature is fine.", TEMP, False),
    ('x = celsius + 2\nprint("done")', TEMP, False),
    # booleans, lists, nested dicts
    ('play_music(songs=["Yesterday", "Hey Jude"], shuffle=True)', MUSIC, True),
    ('{"name": "play_music", "arguments": {"songs": ["yesterday", "hey jude"], "shuffle": true}}', MUSIC, True),
    ('play_music(songs=["Yesterday", "Hey Jude"], shuffle=1)', MUSIC, False),
    ('play_music(songs=["Hey Jude", "Yesterday"], shuffle=True)', MUSIC, False),
    ('play_music(songs=("Yesterday", "Hey Jude"), shuffle=True)', MUSIC, True),
    ('play_music(songs=["Yesterday", "Hey Jude"], shuffle=False)',
     [{"play_music": {"songs": [["Yesterday", "Hey Jude"]], "shuffle": [0]}}], False),
    ('set_seat_position(position={"height": 3, "recline": 10.5})', SEAT, True),
    ('set_seat_position(position={"height": 3, "recline": 11})', SEAT, False),
    ('set_seat_position(position={"height": 3, "recline": 10.5, "lumbar": 2})', SEAT, False),
    ('set_seat_position(position={"height": 3.0, "recline": 10.5})', SEAT_PA, True),
    ('set_seat_position(position={"height": 3, "recline": 10.5, "lumbar": 1})', SEAT_PA, True),
    ('set_seat_position(position={"recline": 10.5})', SEAT_PA, False),
    (json.dumps(ROUTE), ROUTE, True),
    ('plan_route(stops=[{"city": "Nice", "nights": 1}, {"city": "Lyon", "nights": 2}])', ROUTE, False),
])
def test_score_table(text, reference, correct):
    verdict = score(text, reference)
    assert verdict.correct is correct, verdict.reason
    assert (verdict.reason == "") is correct


def test_verdict_counts_and_reason():
    v = score('set_temperature(zone="driver", celsius=22)', TEMP)
    assert (v.arg_tp, v.arg_fp, v.arg_fn) == (1, 1, 0) and v.name_correct
    assert v.reason == "wrong value for 'celsius': 22 not in [21]"
    v = score('get_weather(city="Paris", unit="c")', TEMP)
    assert (v.arg_tp, v.arg_fp, v.arg_fn, v.name_correct) == (0, 2, 2, False)
    assert v.expected_names == ["set_temperature"] and v.predicted_names == ["get_weather"]
    v = score("No change needed.", "no_call")
    assert v.correct and v.name_correct and v.expected_names == v.predicted_names == ["no_call"]
    v = score(TEMP_JSON, "no_call")
    assert not v.name_correct and (v.arg_fp, v.predicted_names) == (2, ["set_temperature"])
    v = score('[get_weather(city="Tokyo"), get_weather(city="Rome")]', WEATHER_PAIR)
    assert (v.arg_tp, v.arg_fp, v.arg_fn, v.name_correct) == (1, 1, 0, True)
    v = score('get_weather(city="Paris")', WEATHER_PAIR)
    assert (v.arg_tp, v.arg_fn, v.name_correct) == (1, 1, False)


def test_tools_add_schema_rules():
    tools = [{"type": "function", "function": {"name": "set_temperature", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string"}, "celsius": {"type": "number"}},
        "required": ["zone", "celsius"]}}}]
    reference = [{"set_temperature": {"zone": ["driver"], "celsius": ["", 21], "fan": ["", 1]}}]
    assert score('set_temperature(zone="driver", celsius=21)', reference, tools).correct
    assert not score('set_temperature(zone="driver")', reference, tools).correct  # the schema requires it
    assert score('set_temperature(zone="driver")', reference).correct
    assert not score('set_temperature(zone="driver", celsius=21, fan=1)', reference, tools).correct


def test_parse_calls():
    assert parse_calls('{"name": "call_contact", "arguments": {"name": "Alice"}}') == [
        Call("call_contact", {"name": "Alice"})]
    assert parse_calls('Calling [f(a=1), g(b="x", c=[1, 2])] now') == [
        Call("f", {"a": 1}), Call("g", {"b": "x", "c": [1, 2]})]
    openai = {"tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    assert parse_calls(json.dumps(openai)) == [Call("f", {})]
    assert parse_calls("<tool_call>\nf(a=None)\n</tool_call>") == [Call("f", {"a": None})]
    for prose in ["The answer (as computed) is 42.", "print(x)", "f(a=some_variable)", "{not json}", "[1, 2, 3]",
                  'Use {"name": "Alice"} here.', "x = [i for i in range(3)]"]:
        assert parse_calls(prose) == [], prose


@pytest.mark.parametrize("reference,expected", [
    (TEMP, [{"set_temperature": {"zone": ["driver"], "celsius": [21]}}]),
    (WEATHER_PAIR, [{"get_weather": {"city": ["Paris"]}}, {"get_weather": {"city": ["Tokyo"]}}]),
    (TEMP_JSON, [{"set_temperature": {"zone": ["driver"], "celsius": [21]}}]),
    (SEAT, [{"set_seat_position": {"position": [{"height": [3], "recline": [10.5]}]}}]),
    (TEMP_PA, TEMP_PA),
    (json.dumps(TEMP_PA), TEMP_PA),
    (TEMP_PA[0], TEMP_PA),
    ({"id": "simple_7", "ground_truth": TEMP_PA}, TEMP_PA),
    ([], []), ("no_call", []), ({"no_call": True}, []), ("[]", []),
    ("not json", None), (42, None), ([{"f": {"a": 1}}], None), ({"name": 3, "arguments": {}}, None),
    ([TEMP, "x"], None), ({"f": {"a": [1]}, "g": {}}, None),
])
def test_parse_reference(reference, expected):
    assert parse_reference(reference) == expected


CAR_TOOLS = [{"type": "function", "function": {
    "name": "set_temperature", "description": "Set the cabin temperature of one zone.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["zone", "celsius"], "properties": {
        "zone": {"type": "string", "enum": ["driver", "passenger", "rear"]},
        "celsius": {"type": "number", "minimum": 16, "maximum": 30},
        "fan": {"type": "integer"}}}}},
    {"name": "call_contact", "description": "Call someone.",
     "parameters": {"type": "dict", "properties": {"name": {"type": "string"}}, "required": ["name"]}}]


@pytest.mark.parametrize("call,problem", [
    (Call("set_temperature", {"zone": "driver", "celsius": 21}), None),
    (Call("set_temperature", {"zone": "rear", "celsius": 21.5, "fan": 2}), None),
    (Call("call_contact", {"name": "Alice"}), None),
    (Call("open_window", {}), "unknown function"),
    (Call("set_temperature", {"celsius": 21}), "'zone' is a required property"),
    (Call("set_temperature", {"zone": "driver", "celsius": "21"}), "not of type 'number'"),
    (Call("set_temperature", {"zone": "driver", "celsius": 21, "fan": True}), "not of type 'integer'"),
    (Call("set_temperature", {"zone": "trunk", "celsius": 21}), "is not one of"),
    (Call("set_temperature", {"zone": "driver", "celsius": 40}), "maximum"),
    (Call("set_temperature", {"zone": "driver", "celsius": 21, "mode": "eco"}), "'mode' was unexpected"),
    (Call("call_contact", {"name": 7}), "not of type 'string'"),
])
def test_validate_call(call, problem):
    found = validate_call(call, CAR_TOOLS)
    assert found is None if problem is None else problem in found, found


# Two entries in the shape of BFCL's data files (question/function) and possible_answer files.
BFCL_SIMPLE = {
    "id": "simple_12",
    "question": [[{"role": "user",
                   "content": "Calculate the area of a triangle with base 10 meters and height 5 meters."}]],
    "function": [{"name": "geometry.triangle_area", "description": "Calculate the area of a triangle.",
                  "parameters": {"type": "dict", "properties": {
                      "base": {"type": "integer", "description": "The base of the triangle."},
                      "height": {"type": "integer", "description": "The height of the triangle."},
                      "unit": {"type": "string", "description": "The unit of measure. Default is 'units'."}},
                      "required": ["base", "height"]}}],
}
BFCL_SIMPLE_ANSWER = {"id": "simple_12", "ground_truth": [
    {"geometry.triangle_area": {"base": [10], "height": [5], "unit": ["meters", "m", ""]}}]}
BFCL_MULTIPLE = {
    "id": "multiple_4",
    "question": [[{"role": "user",
                   "content": "What's the weather going to be in Berlin for the next 3 days, in Celsius?"}]],
    "function": [
        {"name": "weather.current", "description": "Current weather in a city.",
         "parameters": {"type": "dict", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
        {"name": "weather.forecast", "description": "Weather forecast for a city.",
         "parameters": {"type": "dict", "properties": {
             "city": {"type": "string", "description": "City name, e.g. Paris, France."},
             "days": {"type": "integer", "description": "Number of days to forecast."},
             "units": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Default is celsius."}},
             "required": ["city", "days"]}},
        {"name": "air_quality", "description": "Air quality index of a city.",
         "parameters": {"type": "dict", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
}
BFCL_MULTIPLE_ANSWER = {"id": "multiple_4", "ground_truth": [
    {"weather.forecast": {"city": ["Berlin", "Berlin, Germany"], "days": [3], "units": ["celsius", ""]}}]}


@pytest.mark.parametrize("entry,answer,output,correct", [
    (BFCL_SIMPLE, BFCL_SIMPLE_ANSWER, '[geometry.triangle_area(base=10, height=5, unit="meters")]', True),
    (BFCL_SIMPLE, BFCL_SIMPLE_ANSWER,
     '{"name": "geometry_triangle_area", "arguments": "{\\"base\\": 10, \\"height\\": 5}"}', True),
    (BFCL_SIMPLE, BFCL_SIMPLE_ANSWER, '[geometry.triangle_area(base=5, height=10, unit="meters")]', False),
    (BFCL_MULTIPLE, BFCL_MULTIPLE_ANSWER, '[weather.forecast(city="Berlin, Germany", days=3)]', True),
    (BFCL_MULTIPLE, BFCL_MULTIPLE_ANSWER, '[weather.current(city="Berlin")]', False),
    (BFCL_MULTIPLE, BFCL_MULTIPLE_ANSWER, '[weather.forecast(city="Berlin", days=3, hourly=True)]', False),
])
def test_bfcl_entries(entry, answer, output, correct):
    assert entry["question"][0][-1]["role"] == "user"
    verdict = score(output, answer, entry["function"])
    assert verdict.correct is correct, verdict.reason
    if correct:
        assert all(validate_call(call, entry["function"]) is None for call in verdict.predicted)


# A second entry of each category, for files of several lines.
BFCL_SIMPLE_2 = {
    "id": "simple_13",
    "question": [[{"role": "user", "content": "Calculate the factorial of 5 using math functions."}]],
    "function": [{"name": "math.factorial", "description": "Calculate the factorial of a given number.",
                  "parameters": {"type": "dict", "properties": {
                      "number": {"type": "integer", "description": "The number for which factorial is needed."}},
                      "required": ["number"]}}],
}
BFCL_SIMPLE_2_ANSWER = {"id": "simple_13", "ground_truth": [{"math.factorial": {"number": [5]}}]}
BFCL_MULTIPLE_2 = {
    "id": "multiple_5",
    "question": [[{"role": "user", "content": "How many calories does a 30 minute run at 10 km/h burn for a "
                                              "70 kg person?"}]],
    "function": [
        {"name": "fitness.calories", "description": "Calories burnt by an exercise.",
         "parameters": {"type": "dict", "properties": {
             "activity": {"type": "string"}, "minutes": {"type": "integer"}, "speed_kmh": {"type": "float"},
             "weight_kg": {"type": "float"}}, "required": ["activity", "minutes", "weight_kg"]}},
        {"name": "fitness.bmi", "description": "Body mass index.",
         "parameters": {"type": "dict", "properties": {"weight_kg": {"type": "float"}, "height_cm": {"type": "float"}},
                        "required": ["weight_kg", "height_cm"]}}],
}
BFCL_MULTIPLE_2_ANSWER = {"id": "multiple_5", "ground_truth": [
    {"fitness.calories": {"activity": ["running", "run"], "minutes": [30], "speed_kmh": [10.0, ""],
                          "weight_kg": [70.0]}}]}

# The README's mapping of BFCL's files: `question` (a list of turns) as the messages, `function` as the tools,
# the answers joined by id from the possible_answer file of the same name.
BFCL_CONFIG = """
    run: {{name: bfcl, artifacts_dir: {artifacts}}}
    prepare:
      inputs:
        - {{path: BFCL_v3_simple.json, messages: question, tools: function, id: id, task: tool, split: eval,
           reference_file: possible_answer/BFCL_v3_simple.json, reference: ground_truth}}
        - {{path: BFCL_v3_multiple.json, messages: question, tools: function, id: id, task: tool, split: eval,
           reference_file: possible_answer/BFCL_v3_multiple.json, reference: ground_truth}}
    """


def _write_bfcl(root, simple_answers=(BFCL_SIMPLE_ANSWER, BFCL_SIMPLE_2_ANSWER)):
    """BFCL's layout: data files of one JSON object a line, named .json, and possible_answer/ beside them."""
    (root / "possible_answer").mkdir(parents=True)
    for name, entries in {"BFCL_v3_simple.json": [BFCL_SIMPLE, BFCL_SIMPLE_2],
                          "BFCL_v3_multiple.json": [BFCL_MULTIPLE, BFCL_MULTIPLE_2],
                          "possible_answer/BFCL_v3_simple.json": simple_answers,
                          "possible_answer/BFCL_v3_multiple.json": [BFCL_MULTIPLE_2_ANSWER, BFCL_MULTIPLE_ANSWER]}.items():
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in entries))
    return write_config(root / "bfcl.yaml", BFCL_CONFIG.format(artifacts=root / "artifacts"))


@pytest.mark.parametrize("entry,answer,right,wrong", [
    (BFCL_SIMPLE, BFCL_SIMPLE_ANSWER, '[geometry.triangle_area(base=10, height=5, unit="m")]',
     '[geometry.triangle_area(base=5, height=10)]'),
    (BFCL_SIMPLE_2, BFCL_SIMPLE_2_ANSWER, '{"name": "math.factorial", "arguments": {"number": 5}}',
     '{"name": "math.factorial", "arguments": {"number": "5"}}'),
    (BFCL_MULTIPLE, BFCL_MULTIPLE_ANSWER, '<tool_call>{"name": "weather.forecast", "arguments": {"city": "berlin", '
     '"days": 3, "units": "celsius"}}</tool_call>', '[weather.forecast(city="Berlin", days=3, units="fahrenheit")]'),
    (BFCL_MULTIPLE_2, BFCL_MULTIPLE_2_ANSWER, '[fitness.calories(activity="running", minutes=30, weight_kg=70)]',
     '[fitness.bmi(weight_kg=70, height_cm=180)]'),
])
def test_bfcl_files_through_prepare_then_scored(tmp_path, entry, answer, right, wrong):
    result = CliRunner().invoke(main, ["prepare", str(_write_bfcl(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "read 4, rejected 0, dropped_empty 0, dropped_duplicate 0, kept 4" in result.output
    row, = [r for r in pq.read_table(tmp_path / "artifacts/bfcl/prepare/prompts.parquet").to_pylist()
            if r["source_id"] == entry["id"]]
    assert row["messages"] == entry["question"][0] and json.loads(row["tools"]) == entry["function"]
    assert json.loads(row["reference"]) == answer["ground_truth"]
    assert (row["task"], row["split"], row["source"]) == ("tool", "eval", f"BFCL_v3_{entry['id'].split('_')[0]}.json")
    # the stored possible answer scores as BFCL's does, with the tools and on clean's verify path
    tools = json.loads(row["tools"])
    assert score(right, row["reference"], tools).correct and not score(wrong, row["reference"], tools).correct
    assert scoring.is_correct(scoring.extract(right, "tool"), row["reference"], "tool")
    assert not scoring.is_correct(scoring.extract(wrong, "tool"), row["reference"], "tool")


def test_bfcl_turns_are_one_conversation_and_a_missing_answer_is_named(tmp_path):
    turns = [[{"role": "user", "content": "Book a table."}],
             [{"role": "user", "content": "For two, at 8."}]]
    assert rows._messages(turns, "question", "NFC") == [
        {"role": "user", "content": "Book a table."}, {"role": "user", "content": "For two, at 8."}]
    with pytest.raises(rows.RowError, match="column 'question' must be a non-empty list .* or of turns"):
        rows._messages([turns[0], {"role": "user", "content": "x"}], "question", "NFC")
    # simple_13's answer missing: with --on-error skip its question is a rejects row naming the id
    cfg = _write_bfcl(tmp_path, simple_answers=[BFCL_SIMPLE_ANSWER])
    result = CliRunner().invoke(main, ["prepare", str(cfg), "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    assert "read 4, rejected 1" in result.output
    rejects = pq.read_table(tmp_path / "artifacts/bfcl/prepare/rejects.parquet").to_pylist()
    assert [(r["line"], r["reason"]) for r in rejects] == [(2, "id 'simple_13' has no row in BFCL_v3_simple.json")]
