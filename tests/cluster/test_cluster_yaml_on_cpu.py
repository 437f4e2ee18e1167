"""Both launcher configs pass the check `ray up` makes (Ray's prepare_config + validate_config), and a
broken key fails it with Ray's own message."""
import copy
from pathlib import Path

import pytest
import yaml

from cluster.cli import main
from cluster.cluster_yaml import check_cluster_yaml
from studyhall.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
AWS = ROOT / "ray_cluster.yaml"
ONPREM = ROOT / "cluster" / "ray_cluster_onprem.yaml"


def test_aws_config_is_valid_and_targets_teacher_and_student_gpus():
    prepared = check_cluster_yaml(AWS)
    types = prepared["available_node_types"]
    assert types["teacher_gpu_node"]["resources"]["teacher_gpu"] == 1
    assert types["student_gpu_node"]["resources"]["student_gpu"] == 1
    assert types["head"]["resources"] == {"CPU": 0}
    assert all(t["resources"].get("GPU", 0) >= 1 for name, t in types.items() if name != "head")
    assert prepared["head_node_type"] == "head" and prepared["idle_timeout_minutes"] > 0
    # prepare_config merged setup_commands into each role's list; the GPU nodes install torch and the project
    assert any("torch==2.13.0" in c for c in prepared["worker_setup_commands"])
    assert any("pip install -q -e ~/studyhall" in c for c in prepared["worker_setup_commands"])
    assert prepared["file_mounts"] == {"~/studyhall": "."}


def test_onprem_config_is_valid():
    prepared = check_cluster_yaml(ONPREM)
    assert prepared["provider"]["type"] == "local"
    node = prepared["available_node_types"]["local.cluster.node"]
    assert node["min_workers"] == node["max_workers"] == len(prepared["provider"]["worker_ips"]) == 2
    start = " ".join(prepared["worker_start_ray_commands"])
    assert "teacher_gpu" in start and "student_gpu" in start
    assert prepared["provider"]["worker_ips"][0] in start


def _mutated(tmp_path, source, mutate) -> Path:
    config = copy.deepcopy(yaml.safe_load(source.read_text()))
    mutate(config)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


BROKEN = [
    (AWS, lambda c: c.update(idle_timeout_minute=5), "('idle_timeout_minute' was unexpected)"),
    (AWS, lambda c: c["available_node_types"]["teacher_gpu_node"].update(min_worker=1),
     "available_node_types.teacher_gpu_node: Additional properties are not allowed ('min_worker' was unexpected)"),
    (AWS, lambda c: c["docker"].update(imagee="x"), "docker: Additional properties are not allowed ('imagee' was unexpected)"),
    (AWS, lambda c: c.update(head_node_type="gpu_head"), "`head_node_type` must be one of `available_node_types`"),
    (AWS, lambda c: c.update(max_workers=1), "global `max_workers` is smaller than the sum of `min_workers`"),
    (ONPREM, lambda c: c.update(file_mount={}), "('file_mount' was unexpected)"),
    (ONPREM, lambda c: c["provider"].pop("worker_ips"), "Please supply a `head_ip` and list of `worker_ips`"),
    (ONPREM, lambda c: c.update(available_node_types={"gpu": {}}), "available_node_types is not supported for on-premise"),
]


@pytest.mark.parametrize("source, mutate, message", BROKEN)
def test_a_broken_key_fails_with_rays_message(tmp_path, source, mutate, message):
    with pytest.raises(ConfigError) as err:
        check_cluster_yaml(_mutated(tmp_path, source, mutate))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_check_prints_one_line_and_exits_2(tmp_path, capsys):
    assert main(["cluster", "check", str(AWS)]) == 0
    assert "valid for `ray up`" in capsys.readouterr().out
    broken = _mutated(tmp_path, AWS, lambda c: c["auth"].update(ssh_usr="ubuntu"))
    assert main(["cluster", "check", str(broken)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().count("\n") == 0, captured.err
    assert captured.err.startswith(f"studyhall: error: {broken}: ") and "ssh_usr" in captured.err
    assert main(["cluster", "check", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such cluster config file" in capsys.readouterr().err
