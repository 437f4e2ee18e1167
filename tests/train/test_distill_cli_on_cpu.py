"""`studyhall distill` refuses bad input in one line, before any actor or worker starts."""
import json

import pytest

from cluster.cli import main


def _run(capsys, *args):
    code = main(["distill", "--preset", "tiny", "--no-progress", *args])
    return code, capsys.readouterr().err


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Say {w}.", "input": "", "output": w}) + "\n" for w in ("yes", "no", "maybe")))
    return path


def test_missing_field_names_field_line_and_file(tmp_path, capsys):
    path = tmp_path / "dolly.jsonl"
    path.write_text(json.dumps({"instruction": "a", "context": "", "response": "b"}) + "\n"
                    + json.dumps({"instruction": "c", "context": ""}) + "\n")
    code, err = _run(capsys, "--data", str(path), "--out", str(tmp_path / "o"))
    assert code == 2
    assert str(path) in err and "line 2" in err and "'response'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("overrides, expected", [
    (["method=sft", "loss=fkl"], "sft trains on the answers alone"),
    (["method=kd", "teacher_topk=0"], "set train.teacher_topk >= 1"),
    (["method=nope"], "choose one of sft, kd, seqkd, gkd, skd, distillm, switch"),
    (["global_batch=5"], "multiple of micro_batch"),
    (["zero_stage=4"], "choose 0, 1, 2 or 3"),
])
def test_bad_settings_are_one_line_errors(overrides, expected, good_file, tmp_path, capsys):
    code, err = _run(capsys, "--data", str(good_file), "--out", str(tmp_path / "o"), *overrides)
    assert code == 2 and expected in err and "Traceback" not in err


def test_resume_without_a_checkpoint_says_so(good_file, tmp_path, capsys):
    code, err = _run(capsys, "--data", str(good_file), "--out", str(tmp_path / "fresh"), "--resume")
    assert code == 2 and "no checkpoint under" in err


def test_prompt_longer_than_context_names_the_example(tmp_path, capsys):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"id": "huge", "prompt": "word " * 3000, "response": "x"}) + "\n"
                    + json.dumps({"prompt": "short", "response": "y"}) + "\n")
    code, err = _run(capsys, "--data", str(path), "--out", str(tmp_path / "o"))
    assert code == 2 and "'huge'" in err and "context" in err


def _eval(capsys, *args):
    code = main(["eval", "student", "--preset", "tiny", *args])
    return code, capsys.readouterr().err


def test_eval_prompt_file_errors_are_one_line(tmp_path, capsys, good_file):
    missing = tmp_path / "nope.jsonl"
    code, err = _eval(capsys, "--prompts", str(missing))
    assert code == 2 and str(missing) in err and "not found" in err and len(err.strip().splitlines()) == 1

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"prompt": 3}) + "\n")
    code, err = _eval(capsys, "--prompts", str(bad))
    assert code == 2 and str(bad) in err and "line 2" in err and "'prompt'" in err and "Traceback" not in err

    code, err = _eval(capsys, "--prompts", str(good_file), "--data", str(good_file))
    assert code == 2 and "--prompts" in err and "--data" in err and "give one" in err
