"""Fixtures of the training tests: the Dolly file of distill_helpers.ANSWERS."""
import json

import pytest
from distill_helpers import ANSWERS


@pytest.fixture(scope="module")
def dolly_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "dolly.jsonl"
    path.write_text("".join(json.dumps({"instruction": q, "context": "", "response": a}) + "\n" for q, a in ANSWERS))
    return str(path)
