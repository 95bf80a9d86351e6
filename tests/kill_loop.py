"""Kill a stage at random moments, N times, and check every rerun (the README's reliability figures).

    .venv/bin/python tests/kill_loop.py clean 20      # or train, eval

Builds the tiny teacher and its traced run once (as the test suite does), then repeats
tests/test_kill.py's round: copy the run, start the stage, SIGKILL it after a random delay, rerun,
check the outputs against their manifest and that no temporary file is left.
"""
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from tests.conftest import distill_cli, make_tiny_llama, make_tiny_tokenizer, traced_config  # noqa: E402
from tests.test_kill import kill_and_resume  # noqa: E402


def main(stage: str, n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        teacher = make_tiny_llama(make_tiny_tokenizer(root / "tokenizer"), root / "teacher", layers=4)
        (root / "traced").mkdir()
        distill_cli("run", traced_config(root / "traced/c.yaml", root / "traced/artifacts", teacher), "--until", "clean")
        rng = random.Random(0)
        killed = 0
        for i in range(n):
            killed += kill_and_resume(stage, (root / "traced", teacher), root / f"round-{i}", rng)
            print(f"{stage} round {i + 1}/{n}: ok ({killed} killed mid-run so far)", flush=True)
        print(f"{stage}: {n} rounds, {killed} killed mid-run, every rerun complete and consistent")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
