"""charlm: recurrent language models (RNN, LSTM, GRU) trained on any text, char level first.

The version lives in pyproject.toml only; an installed charlm reads it from its metadata.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("charlm")
except _metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, never installed
    __version__ = "0+unknown"

from charlm.config import ModelConfig, ModelShape, RunConfig, SampleConfig, TrainConfig  # noqa: E402
from charlm.errors import CharlmError, OptionError  # noqa: E402
from charlm.inference.classifier import Classifier, Evaluation, Prediction  # noqa: E402
from charlm.inference.generate import Generation, Generator, SampleResult  # noqa: E402
from charlm.inference.scorer import Scorer  # noqa: E402
from charlm.inference.scoring import Score, score_sequences, score_tokens  # noqa: E402
from charlm.models.classifier import SequenceClassifier  # noqa: E402
from charlm.models.rnnlm import RNNLM  # noqa: E402
from charlm.runs.directory import RunDirectory  # noqa: E402
from charlm.runs.open import OpenRun, open_run  # noqa: E402
from charlm.tasks.classify_run import ClassifierRun  # noqa: E402
from charlm.tasks.language_model import LanguageModelTask, Trainer  # noqa: E402
from charlm.tasks.lm_run import LanguageModelRun  # noqa: E402
from charlm.text.corpus import PreparedCorpus, prepare_corpus  # noqa: E402
from charlm.text.sentencepiece import SentencePieceTokenizer  # noqa: E402
from charlm.text.tokenizer import ByteTokenizer, CharTokenizer, load_tokenizer  # noqa: E402
from charlm.training.engine import Engine, TrainResult  # noqa: E402
from charlm.training.task import Task  # noqa: E402

__all__ = [
    "__version__",
    "ByteTokenizer",
    "CharTokenizer",
    "CharlmError",
    "Classifier",
    "ClassifierRun",
    "Engine",
    "Evaluation",
    "Generation",
    "Generator",
    "LanguageModelRun",
    "LanguageModelTask",
    "ModelConfig",
    "ModelShape",
    "OpenRun",
    "OptionError",
    "Prediction",
    "PreparedCorpus",
    "RNNLM",
    "RunConfig",
    "RunDirectory",
    "SampleConfig",
    "SampleResult",
    "Score",
    "Scorer",
    "SentencePieceTokenizer",
    "SequenceClassifier",
    "Task",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "load_tokenizer",
    "open_run",
    "prepare_corpus",
    "score_sequences",
    "score_tokens",
]
