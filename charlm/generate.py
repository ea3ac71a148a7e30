"""Generator: prime a model on a prompt in one forward pass, then sample token by token.

Text comes out as it is made (a generator of str chunks); a character that spans several
tokens (bytes, sentencepiece byte pieces) is held back until it is complete.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from .config import SampleConfig
from .model import RNNLM
from .sampling import next_token
from .tokenizer import StreamDecoder, Tokenizer


class Generator:
    def __init__(self, model: RNNLM, tokenizer: Tokenizer, device: torch.device = torch.device("cpu")):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device

    def _prompt_ids(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt).tolist() if prompt else []
        if not ids:
            # No prompt: start as if after a line break, the most neutral context most corpora have.
            newline = self.tokenizer.encode("\n").tolist()
            ids = newline[:1] if newline and newline[0] != self.tokenizer.unk_id else [0]
        return ids

    def _allowed(self, logits: torch.Tensor) -> torch.Tensor:
        """Never emit the unknown symbol: it stands for no character at all."""
        unk = self.tokenizer.unk_id
        if unk is not None:
            logits = logits.clone()
            logits[..., unk] = float("-inf")
        return logits

    @torch.no_grad()
    def stream(
        self,
        prompt: str = "",
        max_tokens: int = 200,
        config: Optional[SampleConfig] = None,
        seed: Optional[int] = None,
    ) -> Iterator[str]:
        """Yield the continuation of prompt (the prompt itself is not repeated)."""
        config = config or SampleConfig()
        config.validate()
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else torch.seed())
        ids = torch.tensor([self._prompt_ids(prompt)], dtype=torch.long, device=self.device)  # (1, P)
        logits, state = self.model(ids)
        last = self._allowed(logits[:, -1, :])  # (1, V)
        decoder = StreamDecoder(self.tokenizer)
        for _ in range(max_tokens):
            token = next_token(last, config, generator)  # (1,)
            text = decoder.push(int(token))
            if text:
                yield text
            logits, state = self.model(token.view(1, 1), state)
            last = self._allowed(logits[:, -1, :])
        tail = decoder.flush()
        if tail:
            yield tail

    def generate(self, prompt: str = "", max_tokens: int = 200, config: Optional[SampleConfig] = None, seed: Optional[int] = None) -> str:
        return "".join(self.stream(prompt, max_tokens, config, seed))
