"""Drop DINInteraction into your own TorchRec model.

Your EmbeddingCollection already embeds the candidate item and the user's history; one
table per id space serves both. DINInteraction turns its output into an interest vector
per sample, computed on the jagged history (no padding), for your own over arch.

Run: .venv/bin/python examples/din_interaction.py
"""

import torch
from torch import nn
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor

from torchrec_din import AttentionGroup, DINInteraction


class MyRanker(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ec = EmbeddingCollection(
            tables=[
                EmbeddingConfig(name="item", embedding_dim=16, num_embeddings=1000,
                                feature_names=["item", "hist_item"]),
                EmbeddingConfig(name="cate", embedding_dim=16, num_embeddings=50,
                                feature_names=["cate", "hist_cate"]),
            ]
        )
        self.din = DINInteraction(
            [AttentionGroup("behaviour", ["item", "cate"], ["hist_item", "hist_cate"])],
            embedding_dim=16,
            activation="dice",
        )
        self.over = nn.Sequential(nn.Linear(2 * self.din.output_dim, 64), nn.ReLU(),
                                  nn.Linear(64, 1))

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        emb = self.ec(features)
        x = torch.cat([self.din.candidates(emb), self.din(emb)], dim=1)
        return self.over(x).squeeze(1)


if __name__ == "__main__":
    # Three samples with histories of 2, 0 and 3 behaviours (oldest..newest).
    hist = torch.tensor([2, 0, 3])
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["item", "cate", "hist_item", "hist_cate"],
        values=torch.tensor([7, 42, 5,  1, 3, 1,  10, 11, 12, 13, 14,  2, 2, 4, 4, 1]),
        lengths=torch.cat([torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long),
                           hist, hist]),
    )
    model = MyRanker()
    logits = model(kjt)
    logits.sum().backward()
    print("logits:", [round(v, 4) for v in logits.tolist()])
