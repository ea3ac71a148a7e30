"""Generator: prime a model on a prompt, then sample token by token.

    gen = Generator("runs/mine")                      # or Generator(model, tokenizer)
    for text in gen.stream("ROMEO:", max_tokens=300, config=SampleConfig(temperature=0.8)):
        print(text, end="", flush=True)

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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch

from charlm.config import SampleConfig
from charlm.errors import CharlmError
from charlm.hardware import available_memory, require_memory
from charlm.inference.sampling import next_token
from charlm.inference.stepper import Stepper
from charlm.inference.utf8 import Utf8Guard, needs_guard
from charlm.models.rnnlm import RNNLM
from charlm.models.state import expand_lanes, tensor_count
from charlm.text.tokenizer import StreamDecoder, Tokenizer, context_token_id

# Ten million tokens is hours of sampling on a CPU and tens of MB of text per sample, all of
# which is kept (for --json, for the samples printed after the first, for last_results).
MAX_TOKENS = 10_000_000
# The sampling loop visits every sample in Python at each step; past this it crawls.
MAX_SAMPLES = 1_000_000
PRIME_WINDOW = 4096  # prompt tokens per forward pass while priming


def check_counts(num_samples: int, max_tokens: int) -> None:
    """Refuse sample and token counts outside the fixed limits (memory is checked apart)."""
    if num_samples < 1:
        raise CharlmError(f"--num-samples must be at least 1 (got {num_samples})")
    if num_samples > MAX_SAMPLES:
        raise CharlmError(f"--num-samples must be at most {MAX_SAMPLES:,} (got {num_samples:,}); run it in parts")
    if max_tokens < 0:
        raise CharlmError(f"--max-tokens must be 0 or more (got {max_tokens})")
    if max_tokens > MAX_TOKENS:
        raise CharlmError(
            f"--max-tokens must be at most {MAX_TOKENS:,} (got {max_tokens:,}); "
            "for longer text, generate again with the end of this one as --prompt"
        )


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
            from charlm.runs.directory import RunDirectory

            run = RunDirectory(source)
            config = run.read_config()
            tokenizer = run.load_tokenizer(config)
            source, self.checkpoint = run.load_model(checkpoint, device=self.device, config=config)
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
        self._token_bytes = token_bytes
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

    # ----- limits ---------------------------------------------------------------------
    def memory_per_sample(self, max_tokens: int) -> tuple[int, int]:
        """Estimated bytes one more sample of the batch takes: (on the device, in host memory)."""
        V = self.tokenizer.vocab_size
        L, H = self.model.config.layers, self.model.config.hidden
        states = tensor_count(self.model.config.cell)
        # logits, their masked copy and the sampling temporaries (scaled, sorted with int64
        # indices, softmax, cumulative sum, masks); the state and the stepper's gate buffers
        device = 4 * V * 12 + 4 * L * H * states * 8
        mean_token_bytes = max(1.0, sum(map(len, self._token_bytes)) / max(len(self._token_bytes), 1))
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
                per_sample * num_samples, where, f"--num-samples {num_samples:,} x --max-tokens {max_tokens:,}",
                f"use fewer --num-samples{most} or a smaller --max-tokens",
            )

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
        self.check_limits(num_samples, max_tokens)
        B = num_samples
        rng = torch.Generator(device=self.device)
        rng.manual_seed(seed if seed is not None else int(torch.seed() % (1 << 62)))

        ids = torch.tensor([self._prompt_ids(prompt)], dtype=torch.long, device=self.device)  # (1, P)
        model_state = None
        for begin in range(0, ids.shape[1], PRIME_WINDOW):  # (1, V) logits kept, not (1, P, V)
            logits, model_state = self.model(ids[:, begin : begin + PRIME_WINDOW], model_state)
            last = logits[:, -1, :].float()
            del logits
        last = last.expand(B, -1)  # (B, V)
        state = self.stepper.from_model_state(expand_lanes(model_state, B))

        base = self._forbidden_base()
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

        self.last_results = []
        for b in range(B):
            if not finished[b]:
                # an unfinished multi-byte character at the very end is dropped, not replaced
                tail = scanners[b].flush()
                if tail:
                    texts[b].write(tail)
                    yield b, tail
            self.last_results.append(SampleResult(texts[b].getvalue(), counts[b], "stop" if finished[b] else "length"))

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
