"""Rows of a local data file (JSONL, JSON or Parquet) read through HF `datasets`, each with where it sits.

JSONL rows are located by 1-based line number ("line 3"), JSON arrays and Parquet files by 0-based
row index ("row index 2"), so every later error can name the exact place to look. datasets' own
parse errors say only that parsing failed; they come back as ours, with the line or row.
"""
import json
from pathlib import Path

from studyhall.config import ConfigError

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def read_located_rows(path: str | Path, what: str = "data file") -> list[tuple[str, dict]]:
    """(location, row) for every row of a .jsonl, .json (array or JSON lines) or .parquet file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path}: not found")
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ConfigError(f"{what} {path}: unsupported file type {path.suffix or '(none)'!r}; expected .jsonl, .json or .parquet")
    if builder == "parquet":
        rows = _read_parquet(path, what)
    elif _is_json_array(path):
        rows = _read_json_array(path, what)
    else:
        _refuse_single_object(path, what)
        return [(f"{path} line {n}", row) for n, row in read_jsonl(path, what)]
    return [(f"{path} row index {i}", row) for i, row in enumerate(rows)]


def read_jsonl(path: str | Path, what: str = "data file") -> list[tuple[int, dict]]:
    """(line number, row) for each non-blank line of a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path}: not found")
    lines = [n for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if text.strip()]
    if not lines:
        raise ConfigError(f"{what} {path}: empty, expected one JSON object per line")
    try:
        rows = load_quietly("json", path)
    except Exception as err:
        raise _locate_bad_line(path) or ConfigError(f"{what} {path}: cannot be read as JSONL ({_first_line(err)})") from None
    if len(rows) != len(lines):
        raise _locate_bad_line(path) or ConfigError(f"{what} {path}: {len(lines)} lines but {len(rows)} rows")
    return list(zip(lines, rows))


def load_quietly(builder: str, path: Path):
    """datasets.load_dataset without progress bars or log lines: its failures are reported by the caller."""
    import datasets  # deferred: ~2 s to import, and config checks that read no data file should not pay it

    datasets.disable_progress_bars()
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    finally:
        datasets.logging.set_verbosity(verbosity)


def _is_json_array(path: Path) -> bool:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                return line.lstrip().startswith("[")
    return False


def _refuse_single_object(path: Path, what: str) -> None:
    """A pretty-printed single object would otherwise be reported as malformed JSON on line 1."""
    text = path.read_text(encoding="utf-8")
    if sum(1 for line in text.splitlines() if line.strip()) < 2:
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return  # JSON lines, or broken: read_jsonl names the line
    raise ConfigError(f"{what} {path}: one JSON {type(value).__name__} spread over several lines; expected a list of objects or one object per line")


def _read_json_array(path: Path, what: str) -> list[dict]:
    try:
        return list(load_quietly("json", path))
    except Exception as err:
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as bad:
            raise ConfigError(f"{path} line {bad.lineno}: malformed JSON ({bad.msg} at column {bad.colno})") from None
        if value == []:
            raise ConfigError(f"{what} {path}: empty, expected a list of JSON objects") from None
        for i, row in enumerate(value):
            if not isinstance(row, dict):
                raise ConfigError(f"{path} row index {i}: expected a JSON object, got {type(row).__name__}") from None
        raise ConfigError(f"{what} {path}: cannot be read as JSON ({_first_line(err)})") from None


def _read_parquet(path: Path, what: str) -> list[dict]:
    try:
        rows = list(load_quietly("parquet", path))
    except Exception as err:
        import pyarrow.parquet as pq

        try:
            empty = pq.ParquetFile(path).metadata.num_rows == 0
        except Exception:
            empty = False
        if empty:
            raise ConfigError(f"{what} {path}: empty, no rows") from None
        raise ConfigError(f"{what} {path}: cannot be read as Parquet ({_first_line(err)})") from None
    if not rows:
        raise ConfigError(f"{what} {path}: empty, no rows")
    return rows


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _locate_bad_line(path: Path) -> ConfigError | None:
    """datasets says only that parsing failed; find the line that is not a JSON object."""
    for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            return ConfigError(f"{path} line {n}: malformed JSON ({err.msg} at column {err.colno})")
        if not isinstance(value, dict):
            return ConfigError(f"{path} line {n}: expected a JSON object, got {type(value).__name__}")
    return None
