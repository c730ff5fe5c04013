"""The data sets a config can name (``data.dataset``), and the one place that opens them.

``open_source(config)`` looks ``data.dataset`` up in :data:`SOURCES` and returns a
:class:`~torchrec_din.data.source.DataSource`. Built-in sets are read by their module's
reader through the on-disk cache (:func:`load_builtin`, the only cache wrapper: entries are
keyed by the input files' contents and the build parameters), then cut to
``data.max_history``. A new source is a module with a reader or a DataSource class, plus
its line in :data:`SOURCES`.
"""

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, TypeVar

from torchrec_din.data.memory import MemorySource
from torchrec_din.data.samples import cached_build, fingerprint, SampleTable
from torchrec_din.data.schema import FeatureSchema
from torchrec_din.data.source import DataSource

T = TypeVar("T")


@dataclass(frozen=True)
class BuiltinSet:
    """A built-in data set: how to read it and how its cache entry is keyed.

    Attributes:
        read: builds the SampleTable from keyword parameters.
        params: ``(data config, seed)`` -> the reader's keyword parameters.
        cache_files: parameters -> the input files whose contents key the cache entry, or
            None for a set that is not cached (generated in seconds).
        cache_name: the cache entry's name prefix.
        shared_histories: ``data`` config -> whether its protocol pairs each positive with
            negatives on the same history (``data.group_histories: auto`` groups those).
        key_params: parameters -> what keys the cache besides the files (default: all).
        after_cache: fixes up a table read from the cache (e.g. where it was read from).
    """

    read: Callable[..., SampleTable]
    params: Callable[[Dict[str, Any], int], Dict[str, Any]]
    cache_files: Optional[Callable[[Dict[str, Any]], List[str]]]
    cache_name: str
    shared_histories: Callable[[Dict[str, Any]], bool]
    key_params: Callable[[Dict[str, Any]], Dict[str, Any]] = lambda p: dict(p)
    after_cache: Callable[[SampleTable, Dict[str, Any]], None] = lambda t, p: None


def _movielens() -> BuiltinSet:
    from torchrec_din.data.movielens import FILES, find_movielens_100k, read_movielens_100k

    def files(p: Dict[str, Any]) -> List[str]:
        return [os.path.join(find_movielens_100k(p.get("data_dir")), f) for f in FILES]

    def source_folder(table: SampleTable, p: Dict[str, Any]) -> None:
        # The files read now, not those of the run that filled the cache.
        table.meta["source"] = find_movielens_100k(p.get("data_dir"))

    return BuiltinSet(
        read=read_movielens_100k,
        params=lambda d, seed: dict(
            data_dir=d["data_dir"], protocol=d["protocol"], genre=d["genre"],
            valid_per_user=d["valid_per_user"], test_per_user=d["test_per_user"],
            positive_threshold=d["positive_threshold"], seed=seed,
            skip_malformed=d["skip_malformed"], duplicates=d["duplicates"]),
        cache_files=files, cache_name="ml-100k",
        shared_histories=lambda d: d["protocol"] == "next_item",
        key_params=lambda p: {"dataset": "ml-100k",
                              **{k: v for k, v in p.items() if k != "data_dir"}},
        after_cache=source_folder)


def _amazon() -> BuiltinSet:
    from torchrec_din.data.amazon import META, read_amazon_electronics, REVIEWS

    def params(d: Dict[str, Any], seed: int) -> Dict[str, Any]:
        if not d["data_dir"]:
            raise ValueError("data.data_dir must name the folder with reviews_Electronics_5.json "
                             "and meta_Electronics.json")
        return dict(data_dir=d["data_dir"], valid_per_user=d["valid_per_user"],
                    test_per_user=d["test_per_user"], seed=seed,
                    skip_malformed=d["skip_malformed"], duplicates=d["duplicates"])

    return BuiltinSet(
        read=read_amazon_electronics, params=params,
        cache_files=lambda p: [os.path.join(p["data_dir"], REVIEWS),
                               os.path.join(p["data_dir"], META)],
        cache_name="amazon-electronics", shared_histories=lambda d: True,
        key_params=lambda p: {"dataset": "amazon-electronics",
                              **{k: v for k, v in p.items() if k != "data_dir"}})


def _synthetic() -> BuiltinSet:
    from torchrec_din.data.synthetic import generate_synthetic

    return BuiltinSet(read=generate_synthetic,
                      params=lambda d, seed: {**d["synthetic"], "seed": seed},
                      cache_files=None, cache_name="synthetic",
                      shared_histories=lambda d: False)


BUILTIN: Dict[str, Callable[[], BuiltinSet]] = {
    "movielens-100k": _movielens,
    "amazon-electronics": _amazon,
    "synthetic": _synthetic,
}


def load_builtin(name: str, params: Dict[str, Any],
                 cache_dir: Optional[str] = None) -> SampleTable:
    """Built-in set ``name`` read with ``params``, through the cache in ``cache_dir`` when
    given (an entry built from other files or parameters is rebuilt, never used)."""
    spec = BUILTIN[name]()
    if cache_dir is None or spec.cache_files is None:
        return spec.read(**params)
    key_params = spec.key_params(params)
    key = fingerprint(spec.cache_files(params), key_params)
    table, _ = cached_build(cache_dir, spec.cache_name, key, lambda: spec.read(**params),
                            key_params)
    spec.after_cache(table, params)
    return table


def _check_name(name: str) -> None:
    if name not in SOURCES:
        raise ValueError(f"data.dataset must be one of {sorted(SOURCES)}, got {name!r}")


def shares_histories(data_cfg: Dict[str, Any]) -> bool:
    """Whether training runs on shared histories: ``data.group_histories`` (``auto``: the
    built-in protocols that pair every positive with negatives on the same history)."""
    value = data_cfg["group_histories"]
    if value != "auto":
        return bool(value)
    name = data_cfg["dataset"]
    _check_name(name)
    return name in BUILTIN and BUILTIN[name]().shared_histories(data_cfg)


def build_table(data_cfg: Dict[str, Any], seed: int) -> SampleTable:
    """The built-in set the ``data`` config names, through the cache, cut to
    ``max_history``."""
    name = data_cfg["dataset"]
    if name not in BUILTIN:
        _check_name(name)
        raise ValueError(f"data.dataset {name!r} is not a built-in data set held in memory")
    spec = BUILTIN[name]()
    cache_dir = data_cfg["cache_dir"]
    table = load_builtin(name, spec.params(data_cfg, seed),
                         os.path.abspath(cache_dir) if cache_dir else None)
    return table.with_max_history(data_cfg["max_history"])


def _memory_source(config: Dict[str, Any], main_first: Callable[[Callable[[], T]], T]
                   ) -> DataSource:
    data_cfg = config["data"]
    table = main_first(lambda: build_table(data_cfg, int(config["seed"])))
    return MemorySource(table, FeatureSchema.from_config(config["features"]),
                        shares_histories(data_cfg))


def _parquet_source(config: Dict[str, Any], main_first: Callable[[Callable[[], T]], T]
                    ) -> DataSource:
    from torchrec_din.data.parquet import ParquetSource

    if config["data"]["group_histories"] is True:
        raise ValueError("data.group_histories groups a built-in data set's samples by user "
                         "and history; Parquet input has one sample per row")
    schema = FeatureSchema.from_config(config["features"])
    vocab: Dict[str, int] = {}
    for t in schema.table_features():
        n = (config.get("tables", {}).get(t) or {}).get("num_embeddings")
        if not n:
            raise ValueError(f"Parquet input: set tables.{t}.num_embeddings (the number of "
                             f"ids of table {t!r}; ids must be in [0, num_embeddings))")
        vocab[t] = int(n)
    return ParquetSource(config["data"], schema, vocab)


# data.dataset -> opener(config, main_first). main_first(fn) runs fn on rank 0 first, then on
# the other ranks (rank 0 fills the cache).
SOURCES: Dict[str, Callable[..., DataSource]] = {
    **{name: _memory_source for name in BUILTIN},
    "parquet": _parquet_source,
}


def _now(fn: Callable[[], T]) -> T:
    return fn()


def open_source(config: Dict[str, Any],
                main_first: Callable[[Callable[[], T]], T] = _now) -> DataSource:
    """The data source ``config`` names (``data.dataset``).

    Args:
        config (Dict[str, Any]): a resolved run config.
        main_first: runs a builder on rank 0 first, then on the others (default: now).

    Example::

        source = open_source(load_config("configs/movielens_din.yaml"))
        splits = source.splits({"train": 256, "valid": 1024, "test": 1024}, 0, 0, 1)
    """
    name = config["data"]["dataset"]
    _check_name(name)
    return SOURCES[name](config, main_first)
