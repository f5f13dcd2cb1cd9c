"""Hub classifiers: class probabilities from a local HF sequence-classification folder.

A RoBERTa sentiment model or a GoEmotions model, downloaded once to a folder (``hf download
<id> --local-dir DIR``) and named in config as ``steering.hub_classifiers: {name: DIR}``,
writes one column per label, ``<name>_<label>``: softmax probabilities for single-label
models, sigmoid for ``problem_type: multi_label_classification`` (GoEmotions).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from circuitflow.evaluators.base import Item


def _column(name: str, label: str) -> str:
    return f"{name}_" + re.sub(r"[^a-z0-9]+", "_", str(label).lower()).strip("_")


class HubClassifier:
    def __init__(self, name: str, folder: str, batch_size: int = 32, device: str = "cpu"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(folder).expanduser()
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"steering.hub_classifiers.{name}: {folder} is not a model folder (no "
                "config.json); download it where the hub is reachable (hf download <id> "
                "--local-dir DIR) and give DIR"
            )
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        self.device = device
        self.batch_size = batch_size
        config = self.model.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.multi_label = config.problem_type == "multi_label_classification"
        self.columns = [_column(name, label) for label in self.labels]
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"hub classifier {name!r}: labels {self.labels} collide as columns")

    @torch.no_grad()
    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                list(texts[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                return_tensors="pt",
            ).to(self.device)
            logits = self.model(**enc).logits.float()
            probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, -1)
            out.append(probs.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)))

    def score(self, items: Sequence[Item]) -> dict[str, np.ndarray]:
        probs = self.probabilities([it.text for it in items])
        return {col: probs[:, j].astype(float) for j, col in enumerate(self.columns)}
