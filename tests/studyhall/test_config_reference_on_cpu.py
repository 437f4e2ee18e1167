"""docs/configuration.md is rendered from the config dataclasses, and a key without its comment fails."""
import dataclasses
from pathlib import Path

import pytest

from studyhall import config_reference
from studyhall.config import Config, _leaf_paths

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_committed_reference_is_current():
    assert DOC.read_text() == config_reference.render(), "docs/configuration.md is stale: run `make docs`"


def test_every_key_has_a_row_and_no_row_names_a_key_that_is_gone():
    rows = [line.split("|")[1].strip().strip("`") for line in DOC.read_text().splitlines() if line.startswith("| `")]
    assert sorted(rows) == sorted(_leaf_paths(Config()))
    assert len(rows) == len(set(rows))


@dataclasses.dataclass
class _Sample:
    """A stand-in config section."""
    trailing: int = 1  # the comment on its line
    # the comment above it,
    # over two lines
    above: float = 2.0
    bare: str = "x"
    wrapped: dict = dataclasses.field(
        default_factory=dict)  # a comment on a later line of the same statement


@dataclasses.dataclass
class _Child(_Sample):
    extra: bool = False  # a field of the subclass


def test_field_docs_read_trailing_and_preceding_comments_inherited_fields_too():
    docs = config_reference.field_docs(_Child)
    assert docs == {"trailing": "the comment on its line", "above": "the comment above it, over two lines", "bare": "",
                    "wrapped": "a comment on a later line of the same statement", "extra": "a field of the subclass"}


def test_a_key_without_its_comment_stops_the_rendering(monkeypatch):
    real = config_reference.field_docs

    def losing_tau0(cls):
        docs = real(cls)
        if "tau0" in docs:
            docs["tau0"] = ""
        return docs

    monkeypatch.setattr(config_reference, "field_docs", losing_tau0)
    with pytest.raises(config_reference.UndocumentedField, match=r"switch\.tau0: no comment beside SwitchConfig\.tau0"):
        config_reference.render()


def test_preset_values_that_differ_from_the_default_are_shown():
    text = DOC.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `switch.tau0` |"))
    from studyhall.config import load_config

    smol = load_config("smol").switch.tau0
    assert smol != 0.3 and "| `0.3` |" in row and f"smol: `{smol}`" in row
