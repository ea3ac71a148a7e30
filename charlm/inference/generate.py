"""Generator: prime a model on a prompt, then sample token by token.

    gen = Generator("runs/mine")                      # or Generator(model, tokenizer)
    result = gen.generate("ROMEO:", max_tokens=300, config=SampleConfig(temperature=0.8))
    for index, text in result:                        # (sample index, text) as it is made
        print(text, end="", flush=True)
    result.samples                                    # [SampleResult(text, tokens, finish)]

Each call returns its own Generation, so callers sharing one Generator (threads, a server)
never see each other's samples. Its limits are checked when the call is made, before
anything streams; the sampling itself runs as the result is read.

The prompt goes through nn.LSTM/GRU/RNN in a few calls (the fused kernel, PRIME_WINDOW time
steps at a time, so a long prompt never holds logits for all of it); the tokens after it come
from the Stepper (stepper.py), one step for all samples of the batch. Text comes out as it is
made: per sample, ids are decoded incrementally, so a character that spans several tokens is
held back until it is whole, and byte-level tokens are kept on valid UTF-8 (utf8.py). Stop
strings end a sample; text that might be the start of one is held back until it is clear.

Prompt characters the model never saw (char tokenizer only) are left out of the prompt;
`unknown_in_prompt` names them so a caller can warn.

Limits, so a mistyped number is an error rather than a crash or an exhausted machine: at most
MAX_TOKENS tokens per sample and MAX_SAMPLES samples, and a batch whose estimated memory (the
per-sample logits and sampling buffers, the recurrent state, the decoders and the text each
sample keeps) exceeds what the machine has free is refused before it starts.
"""

from __future__ import annotations

import io
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch

from charlm.config import SampleConfig
from charlm.errors import CharlmError, check
from charlm.hardware import available_memory, require_memory
from charlm.inference.sampling import next_token
from charlm.inference.stepper import Stepper
from charlm.inference.utf8 import Utf8Guard, needs_guard
from charlm.models.rnnlm import RNNLM
from charlm.models.state import expand_lanes, tensor_count
from charlm.runs.open import open_run
from charlm.text.tokenizer import StreamDecoder, Tokenizer, context_token_id

# Ten million tokens is hours of sampling on a CPU and tens of MB of text per sample, all of
# which is kept (for --json, for the samples printed after the first, for result.samples).
MAX_TOKENS = 10_000_000
# The sampling loop visits every sample in Python at each step; past this it crawls.
MAX_SAMPLES = 1_000_000
PRIME_WINDOW = 4096  # prompt tokens per forward pass while priming


def check_counts(num_samples: int, max_tokens: int) -> None:
    """Refuse sample and token counts outside the fixed limits (memory is checked apart)."""
    check(num_samples >= 1, "num_samples", f"must be at least 1 (got {num_samples})")
    check(num_samples <= MAX_SAMPLES, "num_samples",
          f"must be at most {MAX_SAMPLES:,} (got {num_samples:,}); run it in parts")  # fmt: skip
    check(max_tokens >= 0, "max_tokens", f"must be 0 or more (got {max_tokens})")
    check(max_tokens <= MAX_TOKENS, "max_tokens", f"must be at most {MAX_TOKENS:,} (got {max_tokens:,}); "
          "for longer text, generate again with the end of this one as --prompt")  # fmt: skip


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


@dataclass(frozen=True)
class SampleResult:
    """One finished sample: its text (without the prompt), the tokens drawn, why it ended."""

    text: str
    tokens: int
    finish: str  # "stop" or "length"


class Generation:
    """The samples of one Generator.generate call.

    Iterate it for (sample index, text) chunks as they are made (once: it is a stream).
    `samples`, `texts` and `text` read the rest of the stream first if it is not done.
    """

    def __init__(self, chunks: Iterator[tuple[int, str]], num_samples: int, seed: int):
        self._chunks = chunks  # a generator whose return value is the list of SampleResult
        self._samples: Optional[list[SampleResult]] = None
        self.num_samples = num_samples
        self.seed = seed

    def __iter__(self) -> Generation:
        return self

    def __next__(self) -> tuple[int, str]:
        if self._samples is not None:
            raise StopIteration
        try:
            return next(self._chunks)
        except StopIteration as end:
            if end.value is None:  # the sampling loop raised earlier (an interrupt) and is gone
                raise CharlmError("this generation was interrupted before it finished; generate again") from None
            self._samples = end.value
            raise StopIteration from None

    @property
    def done(self) -> bool:
        return self._samples is not None

    @property
    def samples(self) -> list[SampleResult]:
        """Each sample's text, token count and finish reason ("stop" or "length")."""
        for _ in self:
            pass
        return self._samples

    @property
    def texts(self) -> list[str]:
        return [sample.text for sample in self.samples]

    @property
    def text(self) -> str:
        """The text of sample 0 (the only one unless num_samples was given)."""
        return self.samples[0].text


class Generator:
    """A loaded model ready to sample from; one instance serves any number of generate() calls."""

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
            opened = open_run(source, checkpoint, self.device)
            source, tokenizer, self.checkpoint = opened.model, opened.tokenizer, opened.checkpoint
        elif tokenizer is None:
            raise CharlmError("Generator(model, tokenizer): a model needs its tokenizer")
        else:
            self.checkpoint = None
            if tokenizer.vocab_size != source.config.vocab_size:
                raise CharlmError(
                    f"Generator(model, tokenizer): the tokenizer has {tokenizer.vocab_size:,} tokens but the model "
                    f"was built for {source.config.vocab_size:,}; give the model its own tokenizer"
                )
        self.model = source.to(self.device).eval()
        self.tokenizer = tokenizer
        self.stepper = Stepper(self.model)
        token_bytes = tokenizer.token_bytes()
        self.guard = Utf8Guard(token_bytes, self.device) if needs_guard(token_bytes) else None
        self.token_bytes = token_bytes

    # ----- prompt ---------------------------------------------------------------------
    def unknown_in_prompt(self, prompt: str) -> list[str]:
        """Characters of prompt outside the vocabulary (they are left out of the prompt)."""
        unk = self.tokenizer.unk_id
        if self.tokenizer.kind != "char" or unk is None or not prompt:
            return []
        ids = self.tokenizer.encode(prompt)
        return sorted({ch for ch, i in zip(prompt, ids.tolist()) if i == unk})

    def prompt_ids(self, prompt: str) -> list[int]:
        """The ids the model is primed with: unknown characters left out, the context token
        for an empty prompt."""
        unk = self.tokenizer.unk_id
        ids = self.tokenizer.encode(prompt).tolist() if prompt else []
        if self.tokenizer.kind == "char":
            ids = [i for i in ids if i != unk]
        return ids or [context_token_id(self.tokenizer)]

    def forbidden_base(self) -> Optional[torch.Tensor]:
        """(V,) True for tokens never to emit: the unknown symbol and control pieces."""
        forbidden = torch.zeros(self.tokenizer.vocab_size, dtype=torch.bool, device=self.device)
        if self.tokenizer.unk_id is not None:
            forbidden[self.tokenizer.unk_id] = True
        for i, data in enumerate(self.tokenizer.token_bytes()):
            if not data:
                forbidden[i] = True
        return forbidden if bool(forbidden.any()) else None

    # ----- limits ---------------------------------------------------------------------
    def memory_per_sample(self, max_tokens: int) -> tuple[int, int]:
        """Estimated bytes one more sample of the batch takes: (on the device, in host memory)."""
        V = self.tokenizer.vocab_size
        L, H = self.model.config.layers, self.model.config.hidden
        states = tensor_count(self.model.config.cell)
        # logits, their masked copy and the sampling temporaries (scaled, sorted with int64
        # indices, softmax, cumulative sum, masks); the state and the stepper's gate buffers
        device = 4 * V * 12 + 4 * L * H * states * 8
        mean_token_bytes = max(1.0, sum(map(len, self.token_bytes)) / max(len(self.token_bytes), 1))
        # each decoder's table of token bytes, and the text the sample keeps
        host = 64 * V + 1024 + int(2 * mean_token_bytes * max_tokens)
        return device, host

    def check_limits(self, num_samples: int, max_tokens: int) -> None:
        """Refuse counts past the fixed limits, or a batch that would not fit in memory."""
        check_counts(num_samples, max_tokens)
        device, host = self.memory_per_sample(max_tokens)
        cpu = torch.device("cpu")
        checks = [(device + host, cpu)] if self.device.type == "cpu" else [(device, self.device), (host, cpu)]
        for per_sample, where in checks:
            free = available_memory(where)
            most = f" (at most about {max(free // per_sample, 0):,} fit here)" if free else ""
            require_memory(
                per_sample * num_samples,
                where,
                f"--num-samples {num_samples:,} x --max-tokens {max_tokens:,}",
                f"use fewer --num-samples{most} or a smaller --max-tokens",
            )

    # ----- sampling -------------------------------------------------------------------
    def generate(
        self,
        prompt: str = "",
        max_tokens: int = 200,
        *,
        num_samples: int = 1,
        config: Optional[SampleConfig] = None,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str]] = (),
    ) -> Generation:
        """Continue prompt in B = num_samples samples, made together as one batch.

        The options and the batch's memory are checked now (CharlmError); the text is made
        as the returned Generation is read. The prompt itself is not repeated in the text.
        """
        config = config or SampleConfig()
        config.validate()
        self.check_limits(num_samples, max_tokens)
        if seed is None:
            seed = int(torch.seed() % (1 << 62))
        chunks = self._sample(prompt, num_samples, max_tokens, config, seed, stop)
        return Generation(chunks, num_samples, seed)

    @torch.inference_mode()
    def _sample(
        self, prompt: str, B: int, max_tokens: int, config: SampleConfig, seed: int, stop: Union[str, Sequence[str]]
    ) -> typing.Generator[tuple[int, str], None, list[SampleResult]]:
        """Yield (sample index, text) chunks; return each sample's SampleResult."""
        rng = torch.Generator(device=self.device)
        rng.manual_seed(seed)

        ids = torch.tensor([self.prompt_ids(prompt)], dtype=torch.long, device=self.device)  # (1, P)
        model_state = None
        for begin in range(0, ids.shape[1], PRIME_WINDOW):  # (1, V) logits kept, not (1, P, V)
            logits, model_state = self.model(ids[:, begin : begin + PRIME_WINDOW], model_state)
            last = logits[:, -1, :].float()
            del logits
        last = last.expand(B, -1)  # (B, V)
        state = self.stepper.from_model_state(expand_lanes(model_state, B))

        base = self.forbidden_base()
        utf8_states = self.guard.initial(B) if self.guard is not None else None
        decoders = [StreamDecoder(self.tokenizer) for _ in range(B)]
        scanners = [StopScanner(stop) for _ in range(B)]
        texts = [io.StringIO() for _ in range(B)]  # compact: a str object per token would be ~50 bytes
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
                    texts[b].write(text)
                    yield b, text
                if stopped:
                    finished[b] = True
            if all(finished):
                break
            last, state = self.stepper.step(tokens, state)
            last = last.float()

        results = []
        for b in range(B):
            if not finished[b]:
                # an unfinished multi-byte character at the very end is dropped, not replaced
                tail = scanners[b].flush()
                if tail:
                    texts[b].write(tail)
                    yield b, tail
            results.append(SampleResult(texts[b].getvalue(), counts[b], "stop" if finished[b] else "length"))
        return results
