"""`ray job submit` against a real local head started with `ray start --head`, as a user would.

The head runs in its own temp dir and process session, on free ports, with a token of its own, so it
never meets the in-process `ray_local` cluster of this pytest run. It is stopped by signalling its
`ray start --block` process (which takes its Ray processes down) and then its whole session: `ray stop`
would stop every Ray process on the machine, this test's in-process cluster included.
"""
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.bench.served_app import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CACHE = os.environ.get("STUDYHALL_CACHE", str(Path.home() / ".cache" / "studyhall"))
# The job's environment on a CPU cluster: what the README tells users to pass.
RUNTIME_ENV = {"env_vars": {"DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                            "STUDYHALL_CACHE": CACHE}, "excludes": [".git"]}


class LocalHead:
    def __init__(self, tmp: Path):
        self.dashboard = f"http://127.0.0.1:{(dash := free_port())}"
        token = tmp / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        self.env.update(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
                        RAY_USAGE_STATS_ENABLED="0")
        self.log = tmp / "head.log"
        self.temp_dir = Path(f"/tmp/shj{os.getpid()}_{secrets.token_hex(2)}")  # short: Ray's socket paths have a length limit
        command = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(free_port()),
                   "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
                   "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
                   "--num-cpus", "2", "--temp-dir", str(self.temp_dir), "--disable-usage-stats"]
        self.process = subprocess.Popen(command, env=self.env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        while "will now block" not in self.log.read_text():
            assert self.process.poll() is None, f"ray start exited: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"head not up after {timeout} s: {self.log.read_text()[-2000:]}"
            time.sleep(0.5)

    def ray(self, *args, timeout=300) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ray"), *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def job(self, command, *args, timeout=300) -> subprocess.CompletedProcess:
        return self.ray("job", command, "--address", self.dashboard, *args, timeout=timeout)

    def session_processes(self) -> list[str]:
        """The head session's processes still alive ("pid stat comm"): zombies have exited, only init reaps them."""
        listed = subprocess.run(["ps", "-s", str(self.process.pid), "-o", "pid=,stat=,comm="], capture_output=True, text=True).stdout
        return [line for line in listed.splitlines() if line.split()[1][0] != "Z"]

    def stop(self, timeout=60):
        """SIGTERM to `ray start --block` stops the head's processes; then SIGKILL to whatever is left of its
        session, until nothing is (on a busy machine the dashboard's processes were seen still running
        just after the head had gone)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + timeout
        while (left := self.session_processes()) and time.monotonic() < deadline:
            for line in left:
                try:
                    os.kill(int(line.split()[0]), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        subprocess.run(["rm", "-rf", str(self.temp_dir)], check=False)


def submit(head: LocalHead, job_id: str, *entrypoint: str, wait: bool = True) -> subprocess.CompletedProcess:
    return head.job("submit", *([] if wait else ["--no-wait"]), "--submission-id", job_id, "--working-dir", str(ROOT),
                    "--runtime-env-json", json.dumps(RUNTIME_ENV), "--", *entrypoint)


def status(head: LocalHead, job_id: str, timeout=240) -> str:
    """SUCCEEDED, FAILED or STOPPED once the job ends, read from `ray job status` as a user would."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = head.job("status", job_id)
        said = re.sub(r"\x1b\[[0-9;]*m", "", run.stdout + run.stderr)
        for state, words in (("SUCCEEDED", "succeeded"), ("FAILED", "failed"), ("STOPPED", "was stopped")):
            if f"Job '{job_id}' {words}" in said:
                return state
        time.sleep(1)
    return "still not finished"


def test_generate_job_round_trip_on_a_local_head(tmp_path):
    out = tmp_path / "switch.jsonl"
    head = LocalHead(tmp_path)
    try:
        head.wait_ready()
        # The two bad jobs run beside the good one; each must stop at its first check, with one line.
        submit(head, "bad_resources", "python", "-m", "cluster", "generate", "--preset", "tiny", "--limit", "2",
               "--out", str(tmp_path / "never.jsonl"), "teacher.num_gpus=1", wait=False)
        submit(head, "bad_file", "python", "-m", "cluster", "generate", "--preset", "tiny",
               "--prompts", "prompts/not_in_working_dir.jsonl", "--out", str(tmp_path / "never2.jsonl"), wait=False)
        good = submit(head, "good", "python", "-m", "cluster", "generate", "--preset", "tiny", "--limit", "4", "--out", str(out),
                      "max_new_tokens=8", "batch_size=4")
        assert status(head, "good") == "SUCCEEDED", good.stdout[-3000:] + good.stderr[-3000:]

        # The working dir went up without .venv (GBs) and out/ (both in .gitignore), or .git (excludes).
        unpacked = [d for d in (head.temp_dir / "session_latest" / "runtime_resources" / "working_dir_files").glob("_ray_pkg_*") if d.is_dir()]
        assert unpacked, "no working dir package on the head"
        for package in unpacked:  # one per job, or fewer: Ray reuses a package with the same content
            assert (package / "cluster" / "generate.py").is_file() and (package / "ray_cluster.yaml").is_file()
            assert not any((package / name).exists() for name in (".venv", "out", ".git"))

        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 4 and all(len(r["token_ids"]) == len(r["from_teacher"]) > 0 for r in rows)
        assert {r["prompt_id"] for r in rows} and all(r["finish_reason"] in ("length", "eos", "stop") for r in rows)
        logs = head.job("logs", "good").stdout
        assert "switch: 100%" in logs and "4/4" in logs  # tqdm progress, visible in `ray job logs`
        assert "wrote 4 sequences to" in logs

        for job_id, line in [("bad_resources", "studyhall: error: teacher asks for 1.0 GPU but the Ray cluster has 0"),
                             ("bad_file", "studyhall: error: prompt file prompts/not_in_working_dir.jsonl: not found")]:
            assert status(head, job_id) == "FAILED"
            logs = head.job("logs", job_id).stdout
            assert line in logs, logs[-2000:]
            assert "Traceback" not in logs
            assert not (tmp_path / ("never.jsonl" if job_id == "bad_resources" else "never2.jsonl")).exists()
    finally:
        head.stop()
    assert head.process.poll() is not None
    left = head.session_processes()
    assert left == [], f"processes of the head's session still running: {left}"
