"""Where data comes from: local files, saved datasets, data directories and hub datasets, read with
``datasets`` (:func:`load_rows`); what is in them is :mod:`.hf_data`'s business.

``spec`` is a ``.jsonl``, ``.json``, ``.csv`` or ``.parquet`` file (``load_dataset("json" | "csv" |
"parquet", data_files=...)``), a ``save_to_disk`` directory (``load_from_disk``), a directory of
data files or a hub dataset id (``load_dataset(spec)``). A split is chosen as ``spec[split]`` or
``split=`` (``datasets``' slices such as ``train[:100]`` work too); a source with several splits
and none chosen is an error naming them. Any failure is one :class:`~.data.DataError` line.

JSON files are read with ``on_mixed_types=None``: by default ``datasets`` reads a column whose rows
hold different types as decoded JSON, turning a string ``"0"`` in another row into the number 0.
Such a file, or one whose columns come back in other types than written (ints and floats mixed
read as floats), is checked on its own rows (:attr:`Loaded.records`) so that the bad row is the
one named, and :func:`load_rows` names the first row of a second type.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import datasets

from . import DataError, _kind, _short, column_names, read_json_records

FILE_LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SAVED_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
Rows = Union[datasets.Dataset, list]


@dataclass
class Loaded:
    """A split as ``datasets`` read it (``rows``; None when it could not: a JSON file mixing types
    in a column), its name in messages (``source``: the file, or ``id[split]``) and, for local JSON
    files, ``records()``: the rows as written (column map applied)."""

    rows: Optional[datasets.Dataset]
    source: str
    records: Optional[Callable[[], list[dict]]] = None
    error: str = ""  # why ``rows`` is None


def load_rows(
    spec: Union[str, Path],
    split: Optional[str] = None,
    column_map: Optional[Mapping[str, str]] = None,
    cache_dir: Optional[Union[str, Path]] = None,
) -> datasets.Dataset:
    """One split of ``spec`` as a ``datasets.Dataset``, its columns renamed by ``column_map``
    ({new name: column in the data}) first. ``cache_dir``: ``datasets``' cache (its default if None)."""
    loaded = open_source(spec, split, column_map, cache_dir)
    if loaded.rows is None:
        raise _mixed_types(loaded.records(), loaded.source, loaded.error)
    return loaded.rows


def open_source(
    spec: Union[str, Path],
    split: Optional[str] = None,
    column_map: Optional[Mapping[str, str]] = None,
    cache_dir: Optional[Union[str, Path]] = None,
) -> Loaded:
    """:func:`load_rows`, keeping what :mod:`.hf_data` needs to check the rows as written."""
    target, split = parse_spec(str(spec), split)
    path = Path(target).expanduser()
    if path.is_file() and FILE_LOADERS.get(path.suffix) == "json":
        return _load_json(path, split, column_map, cache_dir)
    if path.is_file():
        if path.suffix not in FILE_LOADERS:
            raise DataError(
                f"{path}: not a data file; expected a .jsonl, .json, .csv or .parquet file, "
                f"a save_to_disk directory or a hub dataset id"
            )
        ds, source = _load_builder(FILE_LOADERS[path.suffix], split, cache_dir, {"data_files": str(path)}, str(path))
    elif path.is_dir() and any((path / m).exists() for m in SAVED_MARKERS):
        ds, source = _load_saved(path, split)
    elif path.is_dir() or not _looks_local(target):
        ds, source = _load_builder(target, split, cache_dir, {})
    else:
        raise DataError(f"{target}: no such file or directory")
    return Loaded(_rename(ds, column_map, source), source)


def parse_spec(spec: str, split: Optional[str]) -> tuple[str, Optional[str]]:
    """``"prefs.jsonl[test]"`` -> ``("prefs.jsonl", "test")``; the bracket may hold a slice
    (``id[train[:10]]``). A split in both places must agree."""
    target, inner = spec, None
    if spec.endswith("]") and not Path(spec).exists():
        depth = 0
        for i in range(len(spec) - 1, -1, -1):
            depth += {"]": 1, "[": -1}.get(spec[i], 0)
            if depth == 0:
                target, inner = spec[:i], spec[i + 1 : -1]
                break
    if inner is not None and split is not None and inner != split:
        raise DataError(f"{spec}: split {inner!r} in the name but split={split!r}; give one")
    if inner == "" or not target:
        raise DataError(f"{spec}: expected PATH, PATH[split], ID or ID[split]")
    return target, inner if inner is not None else split


def _looks_local(target: str) -> bool:
    return Path(target).suffix in FILE_LOADERS or target.startswith((".", "/", "~")) or target.count("/") > 1


def one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def _choose_split(source: str, names: Optional[list[str]], split: Optional[str]) -> Optional[str]:
    """The split to read: ``split`` (its name checked against ``names`` when known), else the only one."""
    if split is None:
        if names is not None and len(names) > 1:
            raise DataError(f"{source}: has splits {', '.join(names)}; choose one ({source}[split] or split=...)")
        return names[0] if names else None
    base = split.split("[", 1)[0]
    if names is not None and base not in names:
        raise DataError(f"{source}: no split {base!r}; its splits: {', '.join(names)}")
    return split


def _slice(rows: Rows, chosen: str, source: str) -> Rows:
    """``rows`` cut as ``datasets`` cuts a split (``train[:10]``, ``train[10%:]``)."""
    name = chosen.split("[", 1)[0]
    if name == chosen:
        return rows
    try:
        (cut,) = datasets.ReadInstruction.from_spec(chosen).to_absolute({name: len(rows)})
    except ValueError as e:
        raise DataError(f"{source}: bad split {chosen!r} ({one_line(e)})") from None
    if isinstance(rows, datasets.Dataset):
        return rows.select(range(cut.from_, cut.to))
    return rows[cut.from_ : cut.to]


def _load_builder(
    name: str, split: Optional[str], cache_dir, kwargs: dict, source: Optional[str] = None
) -> tuple[datasets.Dataset, str]:
    """``datasets.load_dataset(name, split=...)``, the split checked first against the builder's.
    Named ``source`` (a file: its path, and the split if one was given) or ``name[split]``."""
    cache = {"cache_dir": str(cache_dir)} if cache_dir else {}
    label = source or name
    try:
        builder = datasets.load_dataset_builder(name, **kwargs, **cache)
        splits = builder.config.data_files or builder.info.splits
        names = [str(n) for n in splits] if splits else None
        chosen = _choose_split(label, names, split)
        ds = datasets.load_dataset(name, split=chosen, **kwargs, **cache)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets, pyarrow, the hub client: any failure is one line
        raise DataError(f"{label}: cannot be loaded ({one_line(e)})") from None
    if isinstance(ds, datasets.DatasetDict):  # no split known beforehand: decide now
        chosen = _choose_split(label, list(ds), split)
        ds = ds[chosen]
    if source is not None:
        return ds, source if split is None else f"{source}[{split}]"
    return ds, f"{name}[{chosen}]"


def _load_saved(path: Path, split: Optional[str]) -> tuple[datasets.Dataset, str]:
    try:
        saved = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged directory: pyarrow and json errors alike
        raise DataError(f"{path}: cannot be loaded as a saved dataset ({one_line(e)})") from None
    if isinstance(saved, datasets.Dataset):
        if split is not None:
            raise DataError(f"{path}: a saved Dataset has no splits; got split {split!r}")
        return saved, str(path)
    chosen = _choose_split(str(path), list(saved), split)
    return _slice(saved[chosen.split("[", 1)[0]], chosen, str(path)), f"{path}[{chosen}]"


@contextmanager
def _quiet_json_loader() -> Iterator[None]:
    """Silence the error ``datasets``' JSON loader logs before raising (we report it, in one line)."""
    logger = logging.getLogger("datasets.packaged_modules.json.json")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load_json(path: Path, split: Optional[str], column_map, cache_dir) -> Loaded:
    source = str(path) if split is None else f"{path}[{split}]"

    def records() -> list[dict]:
        rows = read_json_records(path)  # a line that is not JSON is named here
        return _rename(_slice(rows, _choose_split(str(path), ["train"], split) or "train", source), column_map, source)

    try:
        with _quiet_json_loader():
            ds, _ = _load_builder(
                "json", split, cache_dir, {"data_files": str(path), "on_mixed_types": None}, str(path)
            )
    except DataError as e:  # not JSON (records() names the line), or types mixed in a column
        if split is not None and split.split("[", 1)[0] != "train":
            raise
        return Loaded(None, source, records, str(e))
    return Loaded(_rename(ds, column_map, source), source, records)


def _rename(rows: Rows, column_map: Optional[Mapping[str, str]], source: str) -> Rows:
    """Rename columns ({new: old}); a column already named ``new`` (and not renamed) gives way."""
    if not column_map:
        return rows
    names = column_names(rows)
    for new, old in column_map.items():
        if old not in names:
            raise DataError(
                f"{source}: column_map maps {new!r} to {old!r}, which is not a column (columns: {', '.join(names)})"
            )
    renamed = {old: new for new, old in column_map.items() if old != new}
    clashes = [c for c in renamed.values() if c in names and c not in renamed]
    if isinstance(rows, datasets.Dataset):
        return rows.remove_columns(clashes).rename_columns(renamed)
    return [{renamed.get(k, k): v for k, v in row.items() if k not in clashes} for row in rows]


def _json_type(value: Any) -> str:
    kind = _kind(value)
    return "number" if kind in ("int", "float") else kind


def _mixed_types(records: list[dict], source: str, error: str) -> DataError:
    """The error for rows whose column holds a second type (the first such row), or, mixed deeper
    inside lists, ``datasets``' own ``error``."""
    first: dict[str, tuple[int, str]] = {}
    for n, row in enumerate(records, start=1):
        for key, value in row.items():
            if value is None:
                continue
            kind = first.setdefault(key, (n, _json_type(value)))
            if _json_type(value) != kind[1]:
                return DataError(
                    f"{source} row {n}: field {key!r} is {_kind(value)} ({_short(value)}), but row "
                    f"{kind[0]} holds {kind[1]}; every row of a column must hold one type"
                )
    return DataError(f"{error.split(' (', 1)[0]}: its rows hold values of different types ({error.split(' (', 1)[-1]}")
