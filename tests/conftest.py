import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
TESTS = Path(__file__).parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))

from tiny_models import ARCHS, build_model_folder  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """One saved tiny random model folder per architecture (llama, gpt2, gpt_neox, gemma3)."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: build_model_folder(arch, root / arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def tiny_rows() -> list[dict]:
    """The tests/data dataset, validated and split."""
    from circuitflow.datasets import build_prompt_dataset

    return build_prompt_dataset(
        TESTS / "data" / "prompts.jsonl",
        TESTS / "data" / "frames.jsonl",
        ["gratitude", "anger", "apology", "neutral"],
        test_fraction=0.5,
        seed=0,
    )
