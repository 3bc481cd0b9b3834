"""Per-GPU tuning tables: the best launch config per shape bucket, as JSON.

A table is named for the device and the triton version, e.g.
``NVIDIA-H100-80GB-HBM3-triton3.6.0.json``.  Dispatch loads, on first use, the
table shipped in the package (``tritonnorm/tables/``) and then the user's table
(``$TRITONNORM_CACHE_DIR``, default ``~/.cache/tritonnorm``), which wins.  A
corrupt or foreign table gives a warning and is ignored: it never crashes.
"""
import functools
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Dict

import triton

FORMAT = 1


def table_name(device_name: str) -> str:
    return f"{re.sub(r'[^A-Za-z0-9.]+', '-', device_name).strip('-')}-triton{triton.__version__}.json"


def cache_dir() -> Path:
    return Path(os.environ.get("TRITONNORM_CACHE_DIR", Path.home() / ".cache" / "tritonnorm"))


def read_table(path: Path, device_name: str) -> Dict[str, dict]:
    """The entries of the table at ``path``, or {} with a warning if it is unusable."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
            raise ValueError("not a tritonnorm tuning table")
        if data.get("device") != device_name or data.get("triton") != triton.__version__:
            raise ValueError(f"made for {data.get('device')} with triton {data.get('triton')}")
        return {k: dict(v) for k, v in data["entries"].items()}
    except (OSError, ValueError, TypeError, AttributeError) as e:
        warnings.warn(f"tritonnorm: ignoring tuning table {path}: {e}", stacklevel=2)
        return {}


def write_table(device_name: str, entries: Dict[str, dict], directory: Path = None) -> Path:
    """Write atomically (temp file, then rename) and return the path."""
    directory = Path(directory or cache_dir())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / table_name(device_name)
    data = dict(format=FORMAT, device=device_name, triton=triton.__version__, entries=entries)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    device_table.cache_clear()
    return path


@functools.lru_cache(maxsize=None)
def device_table(device_name: str) -> Dict[str, dict]:
    """Shipped entries updated by the user's: loaded once per process and device."""
    name = table_name(device_name)
    entries = read_table(Path(__file__).parent / "tables" / name, device_name)
    entries.update(read_table(cache_dir() / name, device_name))
    return entries
