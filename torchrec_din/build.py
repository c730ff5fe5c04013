"""The model a run configuration describes: its TorchRec tables and DIN or BaseModel. Used
by training and serving alike."""

from typing import Any, Dict

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from torchrec_din.data.schema import FeatureSchema
from torchrec_din.models import BaseModel, DIN, DINModel
from torchrec_din.modules.interaction import AttentionGroup


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
