"""Generator: prime a model on a prompt in one forward pass, then sample token by token.

    gen = Generator("runs/mine")                      # or Generator(model, tokenizer)
    for text in gen.stream("ROMEO:", max_tokens=300, config=SampleConfig(temperature=0.8)):
        print(text, end="", flush=True)

The prompt goes through nn.LSTM/GRU/RNN in one call (the fused kernel, all time steps at
once); the tokens after it come from the Stepper (stepper.py), one step for all samples of
the batch. Text comes out as it is made: per sample, ids are decoded incrementally, so a
character that spans several tokens is held back until it is whole, and byte-level tokens
are kept on valid UTF-8 (utf8.py). Stop strings end a sample; text that might be the start
of one is held back until it is clear.

Prompt characters the model never saw (char tokenizer only) are left out of the prompt;
`unknown_in_prompt` names them so a caller can warn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch

from .config import SampleConfig
from .errors import CharlmError
from .model import RNNLM
from .sampling import next_token
from .stepper import Stepper
from .tokenizer import StreamDecoder, Tokenizer, context_token_id
from .utf8 import Utf8Guard, needs_guard


class StopScanner:
    """Finds stop strings in streamed text; holds back a tail that may begin one."""

    def __init__(self, stops: Union[str, Sequence[str]]):
        if isinstance(stops, str):  # one stop string, not a sequence of one-character ones
            stops = [stops]
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was reached)."""
        if not self.stops:
            return text, False
        buffer = self.pending + text
        hits = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return buffer[: min(hits)], True
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buffer)), hold, -1):
                if buffer.endswith(stop[:size]):
                    hold = size
                    break
        self.pending = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text


@dataclass
class SampleResult:
    text: str
    tokens: int
    finish: str  # "stop" or "length"


class Generator:
    def __init__(
        self,
        source: Union[RNNLM, str, Path],
        tokenizer: Optional[Tokenizer] = None,
        device: Union[str, torch.device] = "cpu",
        checkpoint: str = "auto",
    ):
        """source: a trained RNNLM (then pass its tokenizer) or the path of a run directory."""
        self.device = torch.device(device)
        if isinstance(source, (str, Path)):
            from .checkpoint import RunDirectory

            run = RunDirectory(source)
            config = run.read_config()
            tokenizer = run.load_tokenizer()
            source, self.checkpoint = run.load_model(checkpoint, device=self.device, config=config)
        elif tokenizer is None:
            raise CharlmError("Generator(model, tokenizer): a model needs its tokenizer")
        else:
            self.checkpoint = None
        self.model = source.to(self.device).eval()
        self.tokenizer = tokenizer
        self.stepper = Stepper(self.model)
        token_bytes = tokenizer.token_bytes()
        self.guard = Utf8Guard(token_bytes, self.device) if needs_guard(token_bytes) else None
        self.last_results: list[SampleResult] = []

    # ----- prompt ---------------------------------------------------------------------
    def unknown_in_prompt(self, prompt: str) -> list[str]:
        """Characters of prompt outside the vocabulary (they are left out of the prompt)."""
        unk = self.tokenizer.unk_id
        if self.tokenizer.kind != "char" or unk is None or not prompt:
            return []
        ids = self.tokenizer.encode(prompt)
        return sorted({ch for ch, i in zip(prompt, ids.tolist()) if i == unk})

    def _prompt_ids(self, prompt: str) -> list[int]:
        unk = self.tokenizer.unk_id
        ids = self.tokenizer.encode(prompt).tolist() if prompt else []
        if self.tokenizer.kind == "char":
            ids = [i for i in ids if i != unk]
        return ids or [context_token_id(self.tokenizer)]

    def _forbidden_base(self) -> Optional[torch.Tensor]:
        """(V,) True for tokens never to emit: the unknown symbol and control pieces."""
        forbidden = torch.zeros(self.tokenizer.vocab_size, dtype=torch.bool, device=self.device)
        if self.tokenizer.unk_id is not None:
            forbidden[self.tokenizer.unk_id] = True
        for i, data in enumerate(self.tokenizer.token_bytes()):
            if not data:
                forbidden[i] = True
        return forbidden if bool(forbidden.any()) else None

    # ----- sampling -------------------------------------------------------------------
    @torch.inference_mode()
    def stream_samples(
        self,
        prompt: str = "",
        num_samples: int = 1,
        max_tokens: int = 200,
        config: Optional[SampleConfig] = None,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str]] = (),
    ) -> Iterator[tuple[int, str]]:
        """Yield (sample index, text) chunks as the B = num_samples samples are made together.

        When it is done, `last_results` holds each sample's text, token count and why it ended.
        """
        config = config or SampleConfig()
        config.validate()
        if num_samples < 1:
            raise CharlmError(f"--num-samples must be at least 1 (got {num_samples})")
        if max_tokens < 0:
            raise CharlmError(f"--max-tokens must be 0 or more (got {max_tokens})")
        B = num_samples
        rng = torch.Generator(device=self.device)
        rng.manual_seed(seed if seed is not None else int(torch.seed() % (1 << 62)))

        ids = torch.tensor([self._prompt_ids(prompt)], dtype=torch.long, device=self.device)  # (1, P)
        logits, model_state = self.model(ids)  # one pass over the whole prompt
        last = logits[:, -1, :].float().expand(B, -1)  # (B, V)
        if self.model.config.cell == "lstm":
            model_state = tuple(s.expand(-1, B, -1) for s in model_state)
        else:
            model_state = model_state.expand(-1, B, -1)
        state = self.stepper.from_model_state(model_state)

        base = self._forbidden_base()
        utf8_states = self.guard.initial(B) if self.guard is not None else None
        decoders = [StreamDecoder(self.tokenizer) for _ in range(B)]
        scanners = [StopScanner(stop) for _ in range(B)]
        texts = [[] for _ in range(B)]
        counts = [0] * B
        finished = [False] * B

        for _ in range(max_tokens):
            forbidden = base.expand(B, -1) if base is not None else None
            if utf8_states is not None:
                mask = self.guard.mask(utf8_states)
                forbidden = mask if forbidden is None else (mask | forbidden)
            if forbidden is not None:
                last = last.masked_fill(forbidden, float("-inf"))
            tokens = next_token(last, config, rng)  # (B,)
            if utf8_states is not None:
                utf8_states = self.guard.advance(utf8_states, tokens)
            for b, token in enumerate(tokens.tolist()):
                if finished[b]:
                    continue
                counts[b] += 1
                text, stopped = scanners[b].push(decoders[b].push(token))
                if text:
                    texts[b].append(text)
                    yield b, text
                if stopped:
                    finished[b] = True
            if all(finished):
                break
            last, state = self.stepper.step(tokens, state)
            last = last.float()

        self.last_results = []
        for b in range(B):
            if not finished[b]:
                # an unfinished multi-byte character at the very end is dropped, not replaced
                tail = scanners[b].flush()
                if tail:
                    texts[b].append(tail)
                    yield b, tail
            self.last_results.append(SampleResult("".join(texts[b]), counts[b], "stop" if finished[b] else "length"))

    def stream(
        self,
        prompt: str = "",
        max_tokens: int = 200,
        config: Optional[SampleConfig] = None,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str]] = (),
    ) -> Iterator[str]:
        """Yield the continuation of prompt as it is made (the prompt itself is not repeated)."""
        for _, text in self.stream_samples(prompt, 1, max_tokens, config, seed, stop):
            yield text

    def generate(
        self,
        prompt: str = "",
        max_tokens: int = 200,
        config: Optional[SampleConfig] = None,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str]] = (),
    ) -> str:
        """The continuation of prompt."""
        return self.generate_samples(prompt, 1, max_tokens, config, seed, stop)[0]

    def generate_samples(
        self,
        prompt: str = "",
        num_samples: int = 1,
        max_tokens: int = 200,
        config: Optional[SampleConfig] = None,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str]] = (),
    ) -> list[str]:
        """num_samples continuations of prompt, made together as one batch."""
        for _ in self.stream_samples(prompt, num_samples, max_tokens, config, seed, stop):
            pass
        return [r.text for r in self.last_results]
