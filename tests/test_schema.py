"""The schema module is the single source of truth; the README documents every table and column."""
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.errors import PipelineError
from pipeline.schema import PROMPTS, TABLES

README = (Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.parametrize("table", TABLES.values(), ids=lambda t: t.name)
def test_readme_documents_every_column(table):
    section = README.split(f"### {table.name} ", 1)
    assert len(section) == 2, f"README has no section for table {table.name}"
    body = section[1].split("\n### ", 1)[0]
    for column in table.names:
        assert f"| {column} |" in body, f"README table {table.name} lacks column {column}"


def test_validate_names_file_and_column():
    bad = pa.schema([pa.field(n, pa.string()) for n in PROMPTS.names])
    with pytest.raises(PipelineError, match="x.parquet: column 'messages' is string"):
        PROMPTS.validate(bad, "x.parquet")
    with pytest.raises(PipelineError, match="column 'prompt_id' is missing"):
        PROMPTS.validate(pa.schema([]), "x.parquet")
