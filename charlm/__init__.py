"""charlm: recurrent language models (RNN, LSTM, GRU) trained on any text, char level first."""

__version__ = "0.1.0"

from .checkpoint import RunDirectory  # noqa: E402
from .config import ModelConfig, RunConfig, SampleConfig, TrainConfig  # noqa: E402
from .corpus import PreparedCorpus, prepare_corpus  # noqa: E402
from .errors import CharlmError  # noqa: E402
from .evaluate import Score, score_sequences, score_tokens  # noqa: E402
from .generate import Generator  # noqa: E402
from .model import RNNLM  # noqa: E402
from .tokenizer import ByteTokenizer, CharTokenizer, SentencePieceTokenizer, load_tokenizer  # noqa: E402
from .trainer import Trainer, TrainResult  # noqa: E402

__all__ = [
    "__version__",
    "ByteTokenizer",
    "CharTokenizer",
    "CharlmError",
    "Generator",
    "ModelConfig",
    "PreparedCorpus",
    "RNNLM",
    "RunConfig",
    "RunDirectory",
    "SampleConfig",
    "Score",
    "SentencePieceTokenizer",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "load_tokenizer",
    "prepare_corpus",
    "score_sequences",
    "score_tokens",
]
