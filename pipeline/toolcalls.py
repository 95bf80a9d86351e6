"""Function-calling outputs scored the way the Berkeley Function Calling Leaderboard's AST checker scores them.

    v = score('<tool_call>{"name": "set_temperature", "arguments": {"zone": "Driver", "celsius": 21.0}}</tool_call>',
              [{"set_temperature": {"zone": ["driver"], "celsius": [21], "fan": ["", 3]}}])
    v.correct, v.arg_tp, v.arg_fn          # True, 2, 0  (case folded, 21.0 == 21, `fan` optional)

Outputs may hold calls as JSON ({"name", "arguments"}, OpenAI's {"type": "function", ...}, lists of
them), inside Qwen/Hermes `<tool_call>` tags, or as Python calls `f(a=1)`. References are BFCL
possible answers ({function: {arg: [allowed values]}}, "" marking an optional argument), this
project's simple {"name", "arguments"} form, or "no_call". `validate_call` checks a call against the
tools' JSON schemas, with no reference.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

NO_CALL = "no_call"
THINK_END = "</think>"
TOOL_CALL_TAG = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
# where a call may start: a JSON object or list, or a (dotted) name directly followed by "(" that
# is not the tail of a longer name
CALL_START = re.compile(r"[\[{]|(?<![\w.])[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*\(")
# the characters BFCL's standardize_string drops, so that "April 1, 2024" == "april 1 2024"
BFCL_STRIPPED = re.compile(r"[ ,./\-_*^]")
# BFCL's function docs use Python type names that JSON Schema does not know ("any": no constraint)
BFCL_TYPES = {"dict": "object", "float": "number", "tuple": "array", "any": None}
JSON_DECODER = json.JSONDecoder()


@dataclass
class Call:
    name: str
    arguments: dict


@dataclass
class Verdict:
    correct: bool             # exact-call match, BFCL style
    name_correct: bool        # the graded function name(s) match the expected one(s); no_call counts as a name
    predicted: list[Call]     # every parsed call
    expected_names: list[str]   # ["no_call"] when no call is expected
    predicted_names: list[str]  # ["no_call"] when nothing was called
    arg_tp: int               # arguments present and right
    arg_fp: int               # arguments present but wrong or not allowed
    arg_fn: int               # required arguments missing
    reason: str               # "" when correct


@dataclass
class _Check:
    tp: int
    fp: int
    fn: int
    reason: str


def parse_calls(text: str) -> list[Call]:
    """Every function call in a model's output, in order of appearance: JSON objects with "name" and
    "arguments" (or "parameters"; arguments possibly a JSON string), OpenAI {"type": "function",
    "function": ...} objects, JSON lists of these, `<tool_call>` tags, and Python-style calls with
    keyword literal arguments, alone or in a list. A call's own "name" argument stays an argument.
    Prose, and code that is not such a call, gives []."""
    if THINK_END in text:  # calls drafted while reasoning are not the answer
        text = text.rsplit(THINK_END, 1)[1]
    tagged = TOOL_CALL_TAG.findall(text)
    if tagged:  # with tags, anything outside them is commentary
        return [call for block in tagged for call in _scan(block)]
    return _scan(text)


def _scan(text: str) -> list[Call]:
    """Calls in `text`, JSON and Python-style alike, left to right."""
    calls: list[Call] = []
    pos = 0
    while match := CALL_START.search(text, pos):
        start = match.start()
        found, end = (_json_at if text[start] in "[{" else _python_at)(text, start)
        calls += found
        pos = max(end, start + 1)
    return calls


def _json_at(text: str, start: int) -> tuple[list[Call], int]:
    """The calls in the JSON value starting at `start`, and where it ends; a failed parse ends at `start`."""
    try:
        value, end = JSON_DECODER.raw_decode(text, start)
    except json.JSONDecodeError:
        return [], start
    return _calls_in(value), end


def _calls_in(value: object) -> list[Call]:
    """Call-shaped objects anywhere in a decoded JSON value, never looking inside a call's arguments."""
    if isinstance(value, list):
        return [call for item in value for call in _calls_in(item)]
    if not isinstance(value, dict):
        return []
    call = _as_call(value)
    return [call] if call else [call for item in value.values() for call in _calls_in(item)]


def _as_call(obj: dict) -> Call | None:
    name = obj.get("name")
    arguments = obj.get("arguments", obj.get("parameters"))
    if isinstance(arguments, str):  # OpenAI sends arguments as a JSON-encoded string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or not isinstance(arguments, dict):
        return None
    return Call(name, arguments)


def _python_at(text: str, start: int) -> tuple[list[Call], int]:
    """The Python call starting at `start` (the shortest text up to a ")" that parses), and where it ends."""
    end = text.find(")", start)
    while end != -1:
        try:
            node = ast.parse(text[start:end + 1], mode="eval").body
        except (SyntaxError, ValueError):
            end = text.find(")", end + 1)
            continue
        call = _literal_call(node) if isinstance(node, ast.Call) else None
        return ([call] if call else []), end + 1
    return [], start


def _literal_call(node: ast.Call) -> Call | None:
    """A call with keyword literal arguments only: positional ones cannot be named without the schema."""
    name = _dotted_name(node.func)
    if name is None or node.args or any(keyword.arg is None for keyword in node.keywords):
        return None
    try:
        arguments = {kw.arg: _as_json(ast.literal_eval(kw.value)) for kw in node.keywords}
    except (ValueError, TypeError, SyntaxError):
        return None
    return Call(name, arguments)


def _dotted_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        prefix = _dotted_name(node.value)
        return f"{prefix}.{node.attr}" if prefix else None
    return None


def _as_json(value: object) -> object:
    """Python literals as JSON would give them (tuples become lists), so every parsed call looks alike."""
    if isinstance(value, (list, tuple)):
        return [_as_json(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_json(item) for key, item in value.items()}
    return value


def parse_reference(reference: str | list | dict) -> list[dict[str, dict[str, list]]] | None:
    """A reference as BFCL possible answers: a list of calls {function: {arg: [allowed values]}}, where an
    allowed "" makes the argument optional. Takes BFCL's possible answers (a list, a JSON string of one,
    or a line of its possible_answer file with "ground_truth"), this project's simple form
    {"name": f, "arguments": {...}} or a list of those (each value the only one allowed, each argument
    required), and "no call expected" as [], "no_call" or {"no_call": true}, which give []. Invalid: None."""
    if isinstance(reference, str):
        if reference.strip() == NO_CALL:
            return []
        try:
            return parse_reference(json.loads(reference))
        except json.JSONDecodeError:
            return None
    if isinstance(reference, dict):
        if reference.get(NO_CALL) is True:
            return []
        if "ground_truth" in reference:
            return parse_reference(reference["ground_truth"])
        reference = [reference]
    if not isinstance(reference, list):
        return None
    calls = [_reference_call(item) for item in reference]
    return None if any(call is None for call in calls) else calls


def _reference_call(item: object) -> dict[str, dict[str, list]] | None:
    """One expected call, from either reference form, as a possible answer; None if it is neither."""
    if not isinstance(item, dict):
        return None
    inner = item.get("function")
    call = _as_call(inner if isinstance(inner, dict) else item)
    if call:
        return {call.name: {arg: [_only_allowed(value)] for arg, value in call.arguments.items()}}
    if len(item) == 1:
        (name, arguments), = item.items()
        if isinstance(arguments, dict) and all(isinstance(values, list) for values in arguments.values()):
            return {name: arguments}
    return None


def _only_allowed(value: object) -> object:
    """A simple-form value as a possible answer: BFCL lists a dict's allowed values key by key."""
    if isinstance(value, dict):
        return {key: [_only_allowed(item)] for key, item in value.items()}
    if isinstance(value, list):
        return [_only_allowed(item) for item in value]
    return value


def score(text: str, reference: str | list | dict, tools: list[dict] | None = None) -> Verdict:
    """Grade a model output against a reference with BFCL's AST rules. With one expected call the first
    call made is the answer; with several, the calls made must match them one to one, in any order.
    Names must match exactly ('.' and '_' interchangeable), every required argument must be present,
    no argument outside the reference, and each value among its allowed ones: numbers by value,
    booleans strictly, strings after BFCL's standardization, lists in order, dicts key by key.
    `tools`, when given, also rule out arguments the schema does not declare and require those it does."""
    expected = parse_reference(reference)
    if expected is None:
        raise ValueError(f"not a valid tool-call reference: {reference!r}")
    predicted = parse_calls(text)
    graded = predicted[:1] if len(expected) == 1 else predicted
    checks, unpaired = _pair(expected, graded, tools or [])
    reasons = [check.reason for check in checks if check.reason]
    if unpaired:
        kind = "expected no call" if not expected else "unexpected call"
        reasons.append(f"{kind}, got {', '.join(call.name for call in unpaired)}")
    expected_names = [next(iter(call)) for call in expected] or [NO_CALL]
    graded_names = [call.name for call in graded] or [NO_CALL]
    return Verdict(
        correct=not reasons,
        name_correct=sorted(map(_name_key, graded_names)) == sorted(map(_name_key, expected_names)),
        predicted=predicted,
        expected_names=expected_names,
        predicted_names=[call.name for call in predicted] or [NO_CALL],
        arg_tp=sum(check.tp for check in checks),
        arg_fp=sum(check.fp for check in checks) + sum(len(call.arguments) for call in unpaired),
        arg_fn=sum(check.fn for check in checks),
        reason="; ".join(reasons),
    )


def _pair(expected: list[dict], predicted: list[Call], tools: list[dict]) -> tuple[list[_Check], list[Call]]:
    """Each expected call checked against the predicted call paired with it, and the predicted calls
    left over. As in BFCL each expected call first takes the first free call that matches it; leftovers
    then pair by most right arguments, so that argument counts stay informative."""
    table = [[_check(call, want, tools) for call in predicted] for want in expected]
    pairs: dict[int, int] = {}
    for i, row in enumerate(table):
        match = next((j for j, check in enumerate(row) if not check.reason and j not in pairs.values()), None)
        if match is not None:
            pairs[i] = match
    for i, row in enumerate(table):
        free = [j for j in range(len(predicted)) if j not in pairs.values()]
        if i not in pairs and free:
            pairs[i] = max(free, key=lambda j: row[j].tp)
    checks = [table[i][pairs[i]] if i in pairs else _not_called(want, tools) for i, want in enumerate(expected)]
    return checks, [call for j, call in enumerate(predicted) if j not in pairs.values()]


def _check(call: Call, want: dict[str, dict[str, list]], tools: list[dict]) -> _Check:
    """How one call fares against one expected call."""
    name, allowed = next(iter(want.items()))
    declared, required = _signature(name, allowed, tools)
    if _name_key(call.name) != _name_key(name):
        return _Check(0, len(call.arguments), len(required), f"wrong function {call.name!r}, expected {name!r}")
    problems = []
    for arg, value in call.arguments.items():
        if arg not in allowed or (declared is not None and arg not in declared):
            problems.append(f"unexpected argument {arg!r}")
        elif not _allowed(value, allowed[arg]):
            problems.append(f"wrong value for {arg!r}: {value!r} not in {allowed[arg]!r}")
    missing = sorted(required - call.arguments.keys())
    problems += [f"missing argument {arg!r}" for arg in missing]
    fp = len(problems) - len(missing)
    return _Check(len(call.arguments) - fp, fp, len(missing), "; ".join(problems))


def _not_called(want: dict[str, dict[str, list]], tools: list[dict]) -> _Check:
    name, allowed = next(iter(want.items()))
    return _Check(0, 0, len(_signature(name, allowed, tools)[1]), f"no call to {name!r}")


def _signature(name: str, allowed: dict[str, list], tools: list[dict]) -> tuple[set[str] | None, set[str]]:
    """The arguments the tool's schema declares (None without a schema) and those the call requires."""
    required = {arg for arg, values in allowed.items() if "" not in values}
    tool = _find_tool(tools, name)
    if tool is None:
        return None, required
    parameters = tool.get("parameters") or {}
    return set(parameters.get("properties", {})), required | set(parameters.get("required", []))


def _name_key(name: str) -> str:
    # BFCL lets OpenAI-style models, whose API forbids "." in names, answer math.factorial as math_factorial
    return name.replace(".", "_")


def _allowed(value: object, options: list) -> bool:
    return any(_equal(value, option) for option in options)


def _equal(value: object, expected: object) -> bool:
    """BFCL's value comparison, applied recursively."""
    if isinstance(value, bool) or isinstance(expected, bool):  # True == 1 in Python, not in BFCL
        return type(value) is type(expected) and value == expected
    if isinstance(expected, (int, float)):
        return isinstance(value, (int, float)) and value == expected
    if isinstance(expected, str):
        return isinstance(value, str) and _standardize(value) == _standardize(expected)
    if isinstance(expected, list):
        return (isinstance(value, list) and len(value) == len(expected)
                and all(_equal(item, want) for item, want in zip(value, expected)))
    if isinstance(expected, dict):
        return isinstance(value, dict) and _dict_equal(value, expected)
    return value == expected


def _dict_equal(value: dict, expected: dict) -> bool:
    """A dict value against BFCL's per-key allowed values, where "" again marks an optional key."""
    options = {key: allowed if isinstance(allowed, list) else [allowed] for key, allowed in expected.items()}
    return (all(key in options and _allowed(item, options[key]) for key, item in value.items())
            and all(key in value or "" in allowed for key, allowed in options.items()))


def _standardize(text: str) -> str:
    return BFCL_STRIPPED.sub("", text).lower().replace("'", '"')


def validate_call(call: Call, tools: list[dict]) -> str | None:
    """Why a call breaks the tools' JSON schemas (unknown function, missing required argument, wrong type,
    value outside an enum, unknown argument where additionalProperties is false), or None when it is
    valid. Tools are function definitions {name, description, parameters}, bare or inside
    {"type": "function", "function": ...}; BFCL's type names (dict, float, tuple, any) are understood."""
    tool = _find_tool(tools, call.name)
    if tool is None:
        return f"unknown function {call.name!r}"
    schema = _json_schema(tool.get("parameters") or {"type": "object"})
    error = best_match(Draft202012Validator(schema).iter_errors(call.arguments))
    if error is None:
        return None
    where = "/".join(map(str, error.absolute_path))
    return f"{where}: {error.message}" if where else error.message


def _find_tool(tools: list[dict], name: str) -> dict | None:
    functions = [tool["function"] if isinstance(tool.get("function"), dict) else tool for tool in tools]
    return next((f for f in functions if _name_key(f.get("name", "")) == _name_key(name)), None)


def _json_schema(node: object) -> object:
    """A schema with BFCL's type names replaced by JSON Schema's."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {key: _json_schema(item) for key, item in node.items()}
    kind = schema.get("type")
    if isinstance(kind, str) and kind in BFCL_TYPES:
        if BFCL_TYPES[kind] is None:
            del schema["type"]
        else:
            schema["type"] = BFCL_TYPES[kind]
    return schema
