"""One identity for a result: everything that shapes it, written beside it and used to decide what may be reused.

An identity is a readable prefix (test set, mask, method, SDE and steps) plus a short hash of its fields:

    settings    the method's frozen settings object (every field, `runners/build.method_settings`)
    method      `sampling.method`, and for a diffusion sampler the SDE's numbers (`build.sde_params`), the network
                keys (`model.*`), `use_ema`, `num_samples` and the noise `seed`
    checkpoint  the SHA-256 of the checkpoint file's content (not its name: a retrained file is another result)
    data        every k-space and maps file of the set (name, size, modification time) and the keys that shape a
                loaded slice (`data.image_size`, `data.normalize_type`, `data.normalize_coeff`)
    mask        the sampling mask's family, numbers and the SHA-256 of its values
    slices      the `(file, slice)` pairs the result covers

Reconstruction folders are named `<prefix>_<hash>`; `setting.json` holds the fields and a folder whose fields
differ is refused, naming them. Tune folders use the same identity without the searched keys (their values are
the trial table's columns) and with the validation slices.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

HASH_CHARS = 10
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def digest(fields) -> str:
    """Short SHA-256 of `fields` as canonical JSON (sorted keys)."""
    text = json.dumps(fields, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def file_digest(path: str) -> str:
    """SHA-256 of a file's content, computed once per (path, size, modification time) in a process."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                sha.update(chunk)
        _FILE_DIGESTS[key] = sha.hexdigest()
    return _FILE_DIGESTS[key]


def array_digest(array) -> str:
    """SHA-256 of an array's values (float32, C order)."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(array, dtype=np.float32)).tobytes()).hexdigest()


def _stamp(path: str) -> list:
    stat = os.stat(path)
    return [os.path.basename(path), stat.st_size, stat.st_mtime_ns]


def data_fields(config, volumes) -> dict:
    """The data part of an identity: every volume's k-space and maps file (name, size, mtime) and the data keys that
    shape a loaded slice. `volumes` are `datasets.Volume`s."""
    return {"files": [[_stamp(v.kspace_path), _stamp(v.maps_path)] for v in volumes],
            "image_size": int(config.data.image_size), "normalize_type": config.data.normalize_type,
            "normalize_coeff": float(config.data.normalize_coeff)}


def jsonable(value):
    """`value` with dataclasses as dicts and tuples as lists (what JSON gives back)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=str))


@dataclass(frozen=True)
class Identity:
    """A result's identity: `prefix` (readable) and `fields` (everything that shapes it); `name` is
    `<prefix>_<hash of fields>`."""

    prefix: str
    fields: dict

    @property
    def hash(self) -> str:
        return digest(self.fields)

    @property
    def name(self) -> str:
        return f"{self.prefix}_{self.hash}"


def flat(tree: dict, prefix: str = "") -> dict:
    """`{"group.key": value}` of a nested dict."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def differences(saved: dict, current: dict) -> list[str]:
    """The dotted keys in which two identities' fields differ."""
    a, b = flat(saved), flat(current)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
