"""`studyhall cluster check FILE.yaml`: the schema check `ray up` makes, offline.

`ray up` (ray.autoscaler._private.commands._bootstrap_config) runs `prepare_config` (merge the
provider's defaults, on-prem node types, setup commands, per-type worker counts), asks the cloud to
fill in node resources, then `validate_config` (Ray's ray-schema.json and its cross-field checks),
then the provider's own bootstrap. The cloud calls need credentials and network; the two steps here
are the rest, unchanged, so a wrong key fails here with the message `ray up` would print.
"""
import contextlib
import io
import logging
from pathlib import Path

import yaml

from studyhall.config import ConfigError


def check_cluster_yaml(path) -> dict:
    """The prepared launcher config; ConfigError with Ray's message, on one line, when Ray rejects it."""
    # Deferred: Ray's autoscaler (and its click/jsonschema) load only for `studyhall cluster check`.
    import click
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such cluster config file")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({_one_line(err)})") from None
    if not isinstance(config, dict) or not isinstance(config.get("provider"), dict) or "type" not in config["provider"]:
        raise ConfigError(f"{path}: a Ray cluster config is a mapping with a provider: {{type: ...}} section")
    try:
        with _quiet():  # Ray's launcher logs as it goes; the verdict is ours to print, on one line
            prepared = prepare_config(config)
            validate_config(prepared)
    except jsonschema.ValidationError as err:
        where = ".".join(str(part) for part in err.absolute_path) or "top level"
        raise ConfigError(f"{path}: Ray's cluster schema rejects {where}: {_one_line(err.message)}") from None
    except click.ClickException as err:  # prepare_config's on-prem checks abort through the CLI logger
        raise ConfigError(f"{path}: {_one_line(err.message)}") from None
    except (ValueError, KeyError, AssertionError, RuntimeError, NotImplementedError) as err:
        raise ConfigError(f"{path}: Ray rejects the cluster config: {_one_line(err) or type(err).__name__}") from None
    return prepared


def _one_line(message) -> str:
    return " ".join(str(message).split())


@contextlib.contextmanager
def _quiet():
    ray_logger = logging.getLogger("ray.autoscaler")
    level = ray_logger.level
    ray_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        ray_logger.setLevel(level)
