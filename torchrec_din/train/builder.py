"""Build data and models from a run configuration."""

import os
from typing import Any, Dict, List

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from torchrec_din.data.samples import SampleTable
from torchrec_din.data.schema import FeatureSchema
from torchrec_din.models import BaseModel, DIN, DINModel
from torchrec_din.modules.interaction import AttentionGroup


def build_table(data: Dict[str, Any], seed: int) -> SampleTable:
    """Load (through the cache) the samples the config names, capped at ``max_history``."""
    name = data["dataset"]
    cache_dir = data["cache_dir"]
    if cache_dir:
        cache_dir = os.path.abspath(cache_dir)
    if name == "movielens-100k":
        from torchrec_din.data.movielens import load_movielens_100k

        table = load_movielens_100k(
            cache_dir=cache_dir, data_dir=data["data_dir"], protocol=data["protocol"],
            genre=data["genre"], valid_per_user=data["valid_per_user"],
            test_per_user=data["test_per_user"],
            positive_threshold=data["positive_threshold"], seed=seed,
            skip_malformed=data["skip_malformed"], duplicates=data["duplicates"],
        )
    elif name == "amazon-electronics":
        from torchrec_din.data.amazon import load_amazon_electronics

        if not data["data_dir"]:
            raise ValueError("data.data_dir must name the folder with reviews_Electronics_5.json "
                             "and meta_Electronics.json")
        table = load_amazon_electronics(
            data["data_dir"], cache_dir=cache_dir, valid_per_user=data["valid_per_user"],
            test_per_user=data["test_per_user"], seed=seed,
            skip_malformed=data["skip_malformed"], duplicates=data["duplicates"])
    elif name == "synthetic":
        from torchrec_din.data.synthetic import generate_synthetic

        table = generate_synthetic(seed=seed, **data["synthetic"])
    else:
        raise ValueError(f"data.dataset must be movielens-100k, amazon-electronics or "
                         f"synthetic, got {name!r}")
    return table.with_max_history(data["max_history"])


def table_configs(vocab: Dict[str, int], config: Dict[str, Any]) -> Dict[str, Any]:
    """EmbeddingConfigs (sequence tables: candidate + history features, ``model.embedding_dim``)
    and EmbeddingBagConfigs (one per pooled feature, ``model.pooled_embedding_dim`` or
    ``tables.<name>.embedding_dim``) of the config's feature schema. ``vocab`` (table ->
    rows) comes from the data; ``tables.<name>.num_embeddings`` overrides it."""
    schema = FeatureSchema.from_config(config["features"])
    model, tables = config["model"], config.get("tables", {})

    def rows(table: str) -> int:
        n = tables.get(table, {}).get("num_embeddings") or vocab.get(table)
        if not n:
            raise ValueError(f"table {table!r} has no vocabulary size: set "
                             f"tables.{table}.num_embeddings in the config")
        return int(n)

    sequence = [EmbeddingConfig(name=t, embedding_dim=model["embedding_dim"],
                                num_embeddings=rows(t), feature_names=features)
                for t, features in schema.sequence_tables().items()]
    pooled = [EmbeddingBagConfig(
        name=f, embedding_dim=int(tables.get(f, {}).get("embedding_dim")
                                  or model["pooled_embedding_dim"]),
        num_embeddings=rows(f), feature_names=[f]) for f in schema.pooled]
    return {"sequence": sequence, "pooled": pooled}


def build_model(vocab: Dict[str, int], config: Dict[str, Any],
                device: torch.device = torch.device("cpu")) -> DINModel:
    """DIN or BaseModel for the config's feature schema and vocabularies (table name ->
    rows), as ``config["model"]`` says."""
    model_cfg = config["model"]
    schema = FeatureSchema.from_config(config["features"])
    tables = table_configs(vocab, config)
    ec = EmbeddingCollection(tables=tables["sequence"], device=device)
    ebc = EmbeddingBagCollection(tables=tables["pooled"], device=device) if tables["pooled"] else None
    groups = [AttentionGroup(g.name, g.candidate, g.history) for g in schema.groups]
    common = dict(
        embedding_bag_collection=ebc,
        dense_in_features=len(schema.dense),
        over_arch_layer_sizes=model_cfg["over_arch_layer_sizes"],
        over_arch_activation=model_cfg["over_arch_activation"],
        dropout=model_cfg["dropout"],
        validate_inputs=model_cfg["validate_inputs"],
        device=device,
    )
    if model_cfg["name"] == "din":
        return DIN(
            ec, groups,
            attention_hidden_units=model_cfg["attention_hidden_units"],
            attention_activation=model_cfg["attention_activation"],
            attention_normalization=model_cfg["attention_normalization"],
            use_outer_product=model_cfg["use_outer_product"],
            **common,
        )
    if model_cfg["name"] == "base":
        return BaseModel(ec, groups, **common)
    raise ValueError(f"model.name must be 'din' or 'base', got {model_cfg['name']!r}")
