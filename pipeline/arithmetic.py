"""Grade-school arithmetic word problems with exact answers: the offline quickstart's task.

    distill prepare configs/quickstart.yaml     # with a `prepare.arithmetic` section

Difficulty is the number of operations (1 to 5). The same seed always gives the same problems,
and no eval question repeats a train question, so accuracy on the eval split is held out.
"""
from __future__ import annotations

import random

NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jia", "Kofi", "Lena", "Mateo", "Nia"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "coins", "shells", "cookies", "stamps", "cards"]
INSTRUCTION = "Think step by step, then give the final answer as a number in \\boxed{}."


def _steps(rng: random.Random, name: str, item: str, level: int) -> tuple[list[str], int]:
    """A story of `level` operations on a running count that never goes negative."""
    total = rng.randint(2, 20)
    sentences = [f"{name} has {total} {item}."]
    for _ in range(level):
        op = rng.choice(["add", "sub", "mul"] if total <= 30 else ["add", "sub"])
        if op == "add":
            k = rng.randint(1, 25)
            friend = rng.choice([n for n in NAMES if n != name])
            sentences.append(f"{friend} gives {name} {k} more {item}.")
            total += k
        elif op == "sub" and total > 1:
            k = rng.randint(1, total - 1)
            sentences.append(f"{name} gives away {k} {item}.")
            total -= k
        else:
            k = rng.randint(2, 4)
            sentences.append(f"Then the number of {item} {name} has is multiplied by {k}.")
            total *= k
    return sentences, total


def problems(n: int, levels: list[int], seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    """`n` distinct problems cycling through `levels`; rows: id, question, answer, difficulty."""
    rng = random.Random(seed)
    seen = set(exclude)
    rows = []
    while len(rows) < n:
        level = levels[len(rows) % len(levels)]
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        sentences, answer = _steps(rng, name, item, level)
        question = " ".join(sentences) + f" How many {item} does {name} have now? {INSTRUCTION}"
        if question in seen:
            continue
        seen.add(question)
        rows.append({"id": f"arith-{seed}-{len(rows)}", "question": question, "answer": str(answer),
                     "difficulty": level})
    return rows


def splits(n_train: int, n_eval: int, levels: list[int], seed: int) -> dict[str, list[dict]]:
    """Train and eval problems from separate streams; eval never repeats a train question."""
    train = problems(n_train, levels, seed)
    evals = problems(n_eval, levels, seed + 1_000_003, exclude={r["question"] for r in train})
    for r in evals:
        r["id"] = r["id"].replace("arith-", "arith-eval-")
    return {"train": train, "eval": evals}
