"""The feature schema: which columns feed which tables, attention groups, pooled and dense
inputs. Everything that touches features reads it: tables and model (``torchrec_din.build``),
loaders (in-memory and Parquet), the MBA regulariser, the popularity baseline, metrics
(GAUC groups), the Parquet converter and the sharding planner's pooling factors.

In the YAML config::

    features:
      label: label                 # 0/1 column
      group_by: user               # GAUC groups (the user column)
      groups:                      # target attention: candidate features vs. behaviours
        - name: clicks
          candidate: [item, cate]  # one id per candidate
          history: [click_item, click_cate]   # lists, one per candidate feature, same length
          tables: [item, cate]     # optional (default: the candidate names)
        - name: purchases          # a second sequence against the same candidate
          candidate: [item, cate]
          history: [buy_item, buy_cate]
      pooled: [user, age, brand_prefs]   # EmbeddingBagCollection; int or list-of-int columns
      dense: [price]               # float columns, concatenated into dense_features
    tables:
      item: {num_embeddings: 100000}     # vocabulary sizes (built-in data sets know theirs)
      brand_prefs: {embedding_dim: 8}    # pooled tables may have their own dim
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass(frozen=True)
class GroupSchema:
    """One attention group: candidate features, the history features paired with them (the
    same position shares a table), and those tables."""

    name: str
    candidate: List[str]
    history: List[str]
    tables: List[str]


@dataclass(frozen=True)
class FeatureSchema:
    """The features of a data set and model (see the module docstring for the YAML form).

    Args:
        label (str): the 0/1 label column.
        group_by (str): the column whose values group samples for GAUC (the user).
        groups (List[GroupSchema]): attention groups.
        pooled (List[str]): pooled sparse columns (single- or multi-hot), one table each.
        dense (List[str]): float columns.
    """

    label: str
    group_by: str
    groups: List[GroupSchema]
    pooled: List[str] = field(default_factory=list)
    dense: List[str] = field(default_factory=list)

    @staticmethod
    def from_config(features: Dict[str, Any]) -> "FeatureSchema":
        """Parse and check ``config["features"]``; errors name the bad entry."""
        def names(value: Any, where: str, allow_empty: bool = True) -> List[str]:
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"features.{where} must be a list of column names, got "
                                 f"{value!r}")
            if not value and not allow_empty:
                raise ValueError(f"features.{where} must name at least one column")
            return list(value)

        for key in ("label", "group_by"):
            if not isinstance(features.get(key), str) or not features[key]:
                raise ValueError(f"features.{key} must be a column name, got "
                                 f"{features.get(key)!r}")
        raw_groups = features.get("groups")
        if not isinstance(raw_groups, list) or not raw_groups:
            raise ValueError("features.groups must be a non-empty list of attention groups "
                             "({name, candidate: [...], history: [...]})")
        groups: List[GroupSchema] = []
        for i, g in enumerate(raw_groups):
            where = f"groups[{i}]"
            if not isinstance(g, dict):
                raise ValueError(f"features.{where} must be a mapping, got {g!r}")
            unknown = set(g) - {"name", "candidate", "history", "tables"}
            if unknown:
                raise ValueError(f"features.{where}: unknown key(s) {sorted(unknown)}; expected "
                                 "name, candidate, history, tables")
            cand = names(g.get("candidate"), f"{where}.candidate", allow_empty=False)
            hist = names(g.get("history"), f"{where}.history", allow_empty=False)
            tables = names(g.get("tables", cand), f"{where}.tables")
            if not len(cand) == len(hist) == len(tables):
                raise ValueError(f"features.{where}: candidate {cand}, history {hist} and "
                                 f"tables {tables} must pair up one to one")
            groups.append(GroupSchema(str(g.get("name", f"group{i}")), cand, hist, tables))
        schema = FeatureSchema(
            label=features["label"], group_by=features["group_by"], groups=groups,
            pooled=names(features.get("pooled", []), "pooled"),
            dense=names(features.get("dense", []), "dense"))
        schema._check()
        return schema

    def _check(self) -> None:
        seen: Dict[str, str] = {}
        for name, role in ([(h, "history") for g in self.groups for h in g.history]
                           + [(p, "pooled") for p in self.pooled]
                           + [(d, "dense") for d in self.dense] + [(self.label, "label")]):
            if name in seen:
                raise ValueError(f"features: column {name!r} is used twice ({seen[name]} and "
                                 f"{role})")
            seen[name] = role
        table_of: Dict[str, str] = {}
        for g in self.groups:
            for c, t in zip(g.candidate, g.tables):
                if c in seen:
                    raise ValueError(f"features: candidate column {c!r} is also a {seen[c]} "
                                     "column")
                if table_of.setdefault(c, t) != t:
                    raise ValueError(f"features: candidate {c!r} uses table {table_of[c]!r} in "
                                     f"one group and {t!r} in another")
        overlap = set(self.pooled) & set(self.sequence_tables())
        if overlap:
            raise ValueError(f"features: pooled feature(s) {sorted(overlap)} have the name of a "
                             "sequence table; pooled features get a table each, named as the "
                             "column")

    def candidate_features(self) -> List[str]:
        """Candidate columns in first-use order (a column shared by groups appears once)."""
        out: List[str] = []
        for g in self.groups:
            out += [c for c in g.candidate if c not in out]
        return out

    def history_features(self) -> List[str]:
        return [h for g in self.groups for h in g.history]

    def sequence_features(self) -> List[str]:
        """The EmbeddingCollection's KJT keys: candidates, then histories."""
        return self.candidate_features() + self.history_features()

    def sequence_tables(self) -> Dict[str, List[str]]:
        """Sequence table -> the features that look it up (candidates first)."""
        out: Dict[str, List[str]] = {}
        for g in self.groups:
            for c, t in zip(g.candidate, g.tables):
                if c not in out.setdefault(t, []):
                    out[t].append(c)
        for g in self.groups:
            for h, t in zip(g.history, g.tables):
                out[t].append(h)
        return out

    def table_features(self) -> Dict[str, List[str]]:
        """Every table (sequence and pooled) -> the features that look it up."""
        out = self.sequence_tables()
        out.update({p: [p] for p in self.pooled})
        return out

    def table_of(self, feature: str) -> Optional[str]:
        for table, features in self.table_features().items():
            if feature in features:
                return table
        return None

    def columns(self) -> List[str]:
        """Every column a sample needs (the Parquet file's required columns)."""
        cols = self.candidate_features() + self.history_features() + self.pooled + self.dense
        cols += [c for c in (self.label, self.group_by) if c not in cols]
        return cols

    def popularity_feature(self) -> str:
        """The candidate column the popularity baseline counts (the first group's first)."""
        return self.groups[0].candidate[0]
