"""`studyhall generate`: a real run through the console script, and one-line errors for bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.cli import main

STUDYHALL = str(Path(sys.executable).with_name("studyhall"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.slow  # a subprocess that starts its own Ray
def test_generate_end_to_end_with_summary(tmp_path):
    prompts = _write(tmp_path / "p.jsonl", "\n".join(json.dumps(r) for r in [
        {"id": "a", "prompt": "Name three colors."},
        {"id": "b", "messages": [{"role": "user", "content": "Say hello."}]},
        {"id": "c", "prompt": "Count to five."},
    ]) + "\n")
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    proc = subprocess.run([STUDYHALL, "generate", "--preset", "tiny", "--prompts", str(prompts), "--out", str(out),
                           "--summary", str(summary), "max_new_tokens=12", "tau0=0.3", "lam=0.1"],
                          capture_output=True, text=True, timeout=540, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "teacher share" in proc.stdout and "tokens/s" in proc.stdout and "teacher calls/token" in proc.stdout
    assert "switch:" in proc.stderr  # the progress bar
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["prompt_id"] for r in records) == ["a", "b", "c"]
    assert all(len(r["token_ids"]) == len(r["from_teacher"]) > 0 and isinstance(r["text"], str) for r in records)
    s = json.loads(summary.read_text())
    assert s["sequences"] == 3 and s["tokens"] == sum(len(r["token_ids"]) for r in records)
    assert set(s["teacher_share_by_position"]) and 0 <= s["teacher_share"] <= 1


def test_bad_input_fails_before_ray_starts_without_traceback(tmp_path):
    bad = _write(tmp_path / "bad.jsonl", '{"prompt": "ok"}\n{"prompt": "fine"}\n{"prompt": "broken\n')
    proc = subprocess.run([STUDYHALL, "generate", "--preset", "tiny", "--prompts", str(bad), "--out", str(tmp_path / "o.jsonl")],
                          capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"studyhall: error: {bad} line 3: malformed JSON")
    assert "Traceback" not in proc.stderr and "Started a local Ray instance" not in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("case", ["missing", "empty", "not_object", "no_prompt_field", "too_long", "bad_messages"])
def test_prompt_file_errors_name_file_and_line(tmp_path, capsys, case):
    contents = {
        "empty": "\n\n",
        "not_object": '{"prompt": "a"}\n[1, 2]\n',
        "no_prompt_field": '{"prompt": "a"}\n{"question": "where is the prompt?"}\n',
        "too_long": json.dumps({"prompt": "word " * 3000}) + "\n",
        "bad_messages": '{"messages": [{"role": "user"}]}\n',
    }
    path = tmp_path / "p.jsonl"
    if case != "missing":
        _write(path, contents[case])
    code = main(["generate", "--preset", "tiny", "--prompts", str(path), "--out", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("studyhall: error:")
    expected = {
        "missing": f"prompt file {path}: not found",
        "empty": f"prompt file {path}: empty",
        "not_object": f"{path} line 2: expected a JSON object",
        "no_prompt_field": f"{path} line 2: needs a non-empty string field 'prompt'",
        "too_long": f"{path} line 1: prompt is",
        "bad_messages": f"{path} line 1: field 'messages'",
    }[case]
    assert expected in err
    if case == "too_long":
        assert "exceeds the model context of 2048" in err


@pytest.mark.parametrize("args, fragment", [
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--preset", "tiny", "teacher.path=/no/such/model"], "model path '/no/such/model'"),
    (["--preset", "tiny", "student.path=embedded:giant"], "model path 'embedded:giant': unknown"),
    (["--preset", "tiny", "tau0=-1"], "switch.tau0=-1.0: must be >= 0"),
    (["--preset", "tiny", "gamma=0"], "switch.gamma=0: must be >= 1"),
    (["--preset", "tiny", "temperature=0"], "must be > 0 when sampling"),
    (["--preset", "tiny", "teacher.num_gpus=4"], "teacher asks for 4.0 GPU but the Ray cluster has 0"),
])
def test_config_errors_are_one_line(tmp_path, capsys, args, fragment, ray_local):
    code = main(["generate", *args[:2], "--out", str(tmp_path / "o.jsonl"), *args[2:]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert fragment in err
