"""Run configuration: YAML files merged over defaults, with ``--set key.sub=value`` overrides.

Unknown keys are errors that name the key, so a typo never silently falls back to a default.
"""

import copy
import math
from typing import Any, Dict, List, Optional

import yaml

# Sections whose keys are free-form (checked where they are used).
OPEN_SECTIONS = ("tables",)

DEFAULTS: Dict[str, Any] = {
    "seed": 0,
    # Per-table overrides for sharding: {name: {num_embeddings, sharding_types, compute_kernels}}
    "tables": {},
    "data": {
        "dataset": "movielens-100k",  # movielens-100k | amazon-electronics | synthetic | parquet
        "protocol": "next_item",      # next_item | rating
        "genre": "first",             # MovieLens multi-genre movies: first | combination
        "valid_per_user": 5,
        "test_per_user": 5,
        "positive_threshold": 4.0,
        "max_history": 100,           # keep the most recent behaviours (0: keep all)
        "skip_malformed": False,       # skip (and count) malformed raw lines instead of failing
        "duplicates": "error",         # repeated (user, item, timestamp): error | drop
        "data_dir": None,
        "cache_dir": ".cache/torchrec_din",
        "num_workers": 0,
        # Train on shared histories: samples with the same user and history (next_item: a
        # positive and its negative) become one history with K candidates, looked up once;
        # batch_size then counts histories. auto: on for the built-in next_item protocol
        # (MovieLens next_item, Amazon), off otherwise.
        "group_histories": "auto",    # auto | true | false
        # dataset: parquet. File globs (or lists of them) per split; buffer_rows bounds the
        # rows in memory per DataLoader worker (the shuffle window).
        "parquet": {"train": [], "valid": [], "test": [], "buffer_rows": 65536},
        "synthetic": {
            "num_users": 2000,
            "num_items": 5000,
            "num_cates": 50,
            "samples_per_user": 20,
            "length_distribution": "lognormal",  # lognormal | zipf
            "mean_length": 20.0,
            "max_length": 200,
        },
    },
    # The feature schema (torchrec_din.data.schema): attention groups, pooled and dense
    # features, label and GAUC grouping. These defaults are the built-in data sets' columns.
    "features": {
        "label": "label",
        "group_by": "user",
        "groups": [{"name": "behaviour", "candidate": ["item", "cate"],
                    "history": ["hist_item", "hist_cate"]}],
        "pooled": ["user", "age", "gender", "occupation"],
        "dense": [],
    },
    "model": {
        "name": "din",                # din | base
        "embedding_dim": 32,
        "pooled_embedding_dim": 16,
        "attention_hidden_units": [80, 40],
        "attention_activation": "sigmoid",
        "attention_normalization": "none",
        "use_outer_product": False,
        "over_arch_layer_sizes": [200, 80],
        "over_arch_activation": "prelu",  # prelu | dice
        "dropout": 0.0,
        "validate_inputs": True,       # check ids, lengths, keys, labels of every batch
    },
    "train": {
        "epochs": 5,                  # the cap; with patience > 0 training may stop earlier
        "patience": 0,                # stop when the selection metric on validation has not
                                      # improved this many epochs (0: always train all epochs)
        "select_metric": "gauc",      # gauc | auc | logloss: picks the best epoch (validation)
        "batch_size": 256,
        "eval_batch_size": 2048,
        "optimizer": "adam",          # the dense part (attention, MLPs, Dice): adam | adagrad | sgd
        "learning_rate": 0.001,
        # The embedding tables, on 1 or N processes alike: FBGEMM's fused optimizer, applied
        # inside the backward to the rows each batch looked up (a step costs what the batch
        # touches, not what the tables hold). rowwise_adagrad (one float of state per row)
        # runs on CPU and CUDA, so one recipe trains the same on a laptop and a cluster;
        # adam is CUDA only; auto: train.optimizer where FBGEMM has it fused, else
        # rowwise_adagrad at 0.05.
        "embedding_optimizer": "rowwise_adagrad",  # rowwise_adagrad | adagrad | sgd | adam | auto
        "embedding_learning_rate": 0.05,  # null: train.learning_rate
        "regularization": "none",     # none | l2 | mba (mini-batch aware, paper 4.2)
        "l2_lambda": 0.0,
        "progress": True,
        "checkpoint_every": 200,      # batches between progress checkpoints (0: epoch ends only)
        # Batches between host reads of the loss (progress, non-finite check) and the ranks'
        # stop agreement; between them the loop never waits for the device. 1: every batch.
        "sync_every": 20,
        "dist_timeout_s": 300.0,      # torchrun: a frozen or dead rank ends the job after this
        # glibc malloc keeps freed memory for the next step instead of unmapping it (see
        # torchrec_din.allocator): faster steps at large batches, the process keeps its peak.
        "keep_freed_memory": True,
        # One process: where the model and batches live. auto: cuda when a GPU is there.
        # (torchrun: each rank takes its LOCAL_RANK GPU with nccl, or the CPU with gloo.)
        "device": "auto",             # auto | cpu | cuda | cuda:N
        # torch.compile the dense part (interaction + over arch, dynamic shapes; the
        # collections stay eager), in one process and under torchrun's pipeline.
        "compile": False,
    },
}


# Keys that accept None (null), and what they accept besides it.
NULLABLE: Dict[str, type] = {
    "data.data_dir": str,
    "train.embedding_learning_rate": float,
}
# Keys that take one of a few values of mixed types.
CHOICES: Dict[str, tuple] = {"data.group_histories": ("auto", True, False),
                             "train.embedding_optimizer": ("rowwise_adagrad", "adagrad", "sgd",
                                                           "adam", "auto"),
                             "train.select_metric": ("gauc", "auc", "logloss")}
# Lower bounds checked at load (inclusive), before any data is built.
MINIMUM: Dict[str, float] = {
    "seed": 0, "data.valid_per_user": 0, "data.test_per_user": 1, "data.max_history": 0,
    "data.num_workers": 0, "data.parquet.buffer_rows": 1, "data.synthetic.num_users": 1,
    "data.synthetic.num_items": 1,
    "data.synthetic.num_cates": 1, "data.synthetic.samples_per_user": 1,
    "data.synthetic.mean_length": 0, "data.synthetic.max_length": 1,
    "model.embedding_dim": 1, "model.pooled_embedding_dim": 1, "model.dropout": 0,
    "train.epochs": 1, "train.batch_size": 1, "train.eval_batch_size": 1,
    "train.learning_rate": 1e-12, "train.embedding_learning_rate": 1e-12, "train.l2_lambda": 0,
    "train.checkpoint_every": 0, "train.sync_every": 1, "train.dist_timeout_s": 1,
    "train.patience": 0,
}


def resolve_device(name: str) -> Any:
    """``train.device`` / ``--device`` as a torch.device: auto is cuda when one is
    available, else cpu; asking for cuda without one is an error that says so."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: no CUDA GPU is available to this process (torch "
                         f"{torch.__version__}, CUDA build: {torch.backends.cuda.is_built()}); "
                         "use auto or cpu")
    return device


def _typed(key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of ``default`` (numbers written as text, e.g. YAML's ``1e-4``,
    become numbers), or a ValueError that names the key."""
    want: Optional[type] = NULLABLE.get(key)
    if value is None and key in NULLABLE:
        return value
    if default is None:
        if want is None:
            return value
    else:
        want = type(default)
    assert want is not None
    if want is bool:
        if isinstance(value, bool):
            return value
    elif want is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif want is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
            except ValueError:
                pass
    elif want is list:
        if isinstance(value, list):
            return value
    elif want is str:
        if isinstance(value, str):
            return value
    else:
        return value
    names = {bool: "true or false", int: "an integer", float: "a number", list: "a list",
             str: "a string"}
    raise ValueError(f"config key {key!r} must be {names.get(want, want.__name__)}, got "
                     f"{value!r} ({type(value).__name__})")


def check_values(config: Dict[str, Any], path: str = "") -> None:
    """Check every value's type against DEFAULTS (converting numbers written as text) and the
    lower bounds in MINIMUM, in place. Raises ValueError naming the key."""
    for key, default in DEFAULTS_FLAT.items():
        parts = key.split(".")
        node = config
        for part in parts[:-1]:
            node = node[part]
        if key in CHOICES:
            value = node[parts[-1]]
            if not any(value is c or (isinstance(c, str) and value == c) for c in CHOICES[key]):
                raise ValueError(f"config key {key!r} must be one of "
                                 f"{', '.join(str(c).lower() for c in CHOICES[key])}, got "
                                 f"{value!r}")
            continue
        value = _typed(key, node[parts[-1]], default)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"config key {key!r} must be a finite number, got {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2 ** 63:
            raise ValueError(f"config key {key!r} must fit in 64 bits, got {value!r}")
        low = MINIMUM.get(key)
        if low is not None and value is not None and value < low:
            raise ValueError(f"config key {key!r} must be >= {low:g}, got {value!r}")
        node[parts[-1]] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (YAML itself keeps
    the last silently, so a second ``train:`` block would replace the first)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Dict[Any, Any]:
        seen: Dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ValueError(f"key {key!r} is written twice (lines {seen[key]} and "
                                 f"{line}); YAML would keep only the last")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _UniqueKeyLoader.construct_mapping)


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        full = prefix + key
        if full in OPEN_SECTIONS:
            continue
        if isinstance(value, dict):
            out.update(_flatten(value, full + "."))
        else:
            out[full] = value
    return out


DEFAULTS_FLAT = _flatten(DEFAULTS)


def _merge(base: Dict[str, Any], update: Dict[str, Any], path: str = "") -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        full = f"{path}{key}"
        if path == "" and key in OPEN_SECTIONS:
            out[key] = _merge_open(base[key], value, key)
            continue
        if full == "data.pooled_features":
            raise KeyError("config key 'data.pooled_features' is now 'features.pooled' (the "
                           "feature schema)")
        if key not in base:
            raise KeyError(f"unknown config key {full!r}; known keys here: {sorted(base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"config key {full!r} must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, full + ".")
        else:
            out[key] = value
    return out


def _merge_open(base: Dict[str, Any], update: Any, path: str) -> Dict[str, Any]:
    if not isinstance(update, dict):
        raise ValueError(f"config key {path!r} must be a mapping, got {update!r}")
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_open(out[key], value, f"{path}.{key}")
        else:
            out[key] = value
    return out


def _yaml_problem(e: Any) -> str:
    """YAML's error as one line: what is wrong, and where (line and column, 1-based)."""
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(e, 'problem', None) or str(e).splitlines()[0]}{where}"


def parse_override(item: str) -> Dict[str, Any]:
    """``"train.epochs=3"`` -> ``{"train": {"epochs": 3}}`` (the value is parsed as YAML)."""
    if "=" not in item:
        raise ValueError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value: Any = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as e:
        raise ValueError(f"--set {item}: the value is not valid YAML ({_yaml_problem(e)})") \
            from None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> Dict[str, Any]:
    """Defaults, then the YAML file, then each override in order."""
    config = copy.deepcopy(DEFAULTS)
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.load(f, Loader=_UniqueKeyLoader)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({_yaml_problem(e)})") from None
        except ValueError as e:  # a key written twice
            raise ValueError(f"{path}: {e}") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
        except IsADirectoryError:
            raise ValueError(f"{path} is a folder, not a YAML config file") from None
        if loaded is None:
            raise ValueError(f"{path} is empty: write the settings that differ from the "
                             "defaults, at least data and features (see configs/)")
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: the config must be a YAML mapping")
        config = _merge(config, loaded)
    given = set(loaded) if path else set()
    for item in overrides or []:
        override = parse_override(item)
        given |= set(override)
        config = _merge(config, override)
    check_values(config)
    if config["data"]["dataset"] == "parquet" and "features" not in given:
        # The default schema names the built-in data sets' columns (age, gender, ...): a
        # Parquet file has its own, so they must be written down.
        raise ValueError(f"{path or 'the config'}: data.dataset is parquet but there is no "
                         "features: section naming the files' columns (label, groups of "
                         "candidate and history columns, pooled, dense); see "
                         "configs/synthetic_din.yaml for its shape")
    from torchrec_din.data.schema import FeatureSchema

    check_tables(config, FeatureSchema.from_config(config["features"]))  # errors name the entry
    return config


# Per-table keys of ``tables.<name>`` and what each accepts.
TABLE_KEYS = ("num_embeddings", "embedding_dim", "sharding_types", "compute_kernels",
              "history_mean_length")


def check_tables(config: Dict[str, Any], schema: Any) -> None:
    """Check ``tables:`` against the feature schema at load, in place: every table named
    exists, every key is known and of the right type and bound. A sequence table takes no
    ``embedding_dim``: its features share one EmbeddingCollection, whose tables must share
    ``model.embedding_dim``. Raises ValueError naming the table and key."""
    from torchrec.distributed.embedding_types import EmbeddingComputeKernel
    from torchrec.distributed.types import ShardingType

    tables = config["tables"]
    if not isinstance(tables, dict):
        raise ValueError(f"config key 'tables' must be a mapping of table name -> settings, "
                         f"got {tables!r}")
    sequence = schema.sequence_tables()
    known = list(sequence) + list(schema.pooled)
    lists = {"sharding_types": [t.value for t in ShardingType],
             "compute_kernels": [k.value for k in EmbeddingComputeKernel]}
    for name, spec in tables.items():
        where = f"tables.{name}"
        if name not in known:
            raise ValueError(f"{where}: no table {name!r} in the feature schema; its tables are "
                             f"{known} (sequence tables: {list(sequence)}, pooled: "
                             f"{list(schema.pooled)})")
        if not isinstance(spec, dict):
            raise ValueError(f"{where} must be a mapping with keys from {list(TABLE_KEYS)}, "
                             f"got {spec!r}")
        for key, value in spec.items():
            if key not in TABLE_KEYS:
                raise ValueError(f"{where}: unknown key {key!r}; known keys: {list(TABLE_KEYS)}")
            if key in ("num_embeddings", "embedding_dim"):
                spec[key] = _typed(f"{where}.{key}", value, 0)
                if spec[key] < 1:
                    raise ValueError(f"config key '{where}.{key}' must be >= 1, got {value!r}")
                if key == "embedding_dim" and name in sequence:
                    raise ValueError(
                        f"{where}.embedding_dim: {name!r} is a sequence table (features "
                        f"{sequence[name]}); all sequence tables share one "
                        "EmbeddingCollection and so one dim: set model.embedding_dim instead")
            elif key == "history_mean_length":
                spec[key] = _typed(f"{where}.{key}", value, 0.0)
                if spec[key] <= 0:
                    raise ValueError(f"config key '{where}.{key}' must be > 0, got {value!r}")
            else:
                if isinstance(value, str):
                    value = spec[key] = [value]
                if not isinstance(value, list) or not value or any(
                        v not in lists[key] for v in value):
                    raise ValueError(f"config key '{where}.{key}' must be a non-empty list from "
                                     f"{lists[key]}, got {value!r}")
