"""The RNNLM's regularisers: weight dropout (DropConnect on weight_hh), embedding dropout of whole
tokens, and locked (variational) dropout.

Each changes what training computes and nothing in eval mode (which equals the same weights
without it); a weight-dropout mask is drawn once per forward call and the gradient reaches the
raw weights through it; the fused recurrent kernel still runs the whole window (no per-step
loop); locked dropout's layer-by-layer run equals the one-module run, carried state included;
the state-dict keys and the parameter count stay as they were; a run with all of them on
resumes bit-identically; a config.json from before them loads with them off; bad values are
refused naming their option; and `charlm train --weight-dropout ...` runs end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import (
    TINY,
    assert_user_error,
    invoke,
    make_corpus,
    new_trainer,
    numbered_lines,
    of_kind,
    read_config,
    read_events,
    resumed_trainer,
    same_weights,
    word_text,
    write_text,
)
from torch import nn
from torch.autograd.profiler import profile

from charlm.config import ModelConfig, ModelShape, RunConfig
from charlm.errors import OptionError
from charlm.models import state as states
from charlm.models.regularisers import Regularisers, locked_dropout, token_dropout
from charlm.models.rnnlm import RNNLM, count_parameters
from charlm.runs.directory import LAST, RunDirectory

V = 13
BASE = dict(vocab_size=V, cell="lstm", layers=2, hidden=16, embed=8, dropout=0.0)
REGULARISERS = {
    "weight_dropout": dict(weight_dropout=0.4),
    "embed_dropout": dict(embed_dropout=0.4),
    "locked": dict(dropout_kind="locked", dropout=0.4),
}


def make(**options) -> RNNLM:
    torch.manual_seed(0)
    return RNNLM(ModelConfig(**{**BASE, **options}))


def twin(model: RNNLM, **options) -> RNNLM:
    """A model of another configuration holding exactly `model`'s weights."""
    other = RNNLM(ModelConfig(**{**model.config.to_dict(), **options}))
    other.load_state_dict(model.state_dict())
    return other


def inputs(lanes: int = 3, steps: int = 9, seed: int = 1):
    """Tokens (B, T) and a random carried state, so the state's path is exercised too."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (lanes, steps), generator=generator)
    return x, generator


def random_state(model: RNNLM, lanes: int, generator: torch.Generator) -> states.State:
    return states.apply(lambda t: torch.randn(t.shape, generator=generator), model.init_state(lanes))


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal to float32 rounding (torch.testing's own check imports for over a second)."""
    assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-6, (a - b).abs().max()


def run(model: RNNLM, x, state, seed: int = 7, train: bool = True):
    torch.manual_seed(seed)
    return model.train(train)(x, state)


# ----- training changes, eval does not --------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("name", list(REGULARISERS))
def test_each_regulariser_changes_training_and_leaves_eval_as_without_it(name, cell):
    model = make(cell=cell, **REGULARISERS[name])
    without = twin(model, dropout_kind="standard", weight_dropout=0.0, embed_dropout=0.0, dropout=0.0)
    x, generator = inputs()
    state = random_state(model, 3, generator)
    trained, _ = run(model, x, state)
    plain, _ = run(without, x, state)
    assert not torch.allclose(trained, plain)
    again, _ = run(model, x, state, seed=8)
    assert not torch.allclose(trained, again)  # a new draw each batch
    evaluated, eval_state = run(model, x, state, train=False)
    reference, reference_state = run(without, x, state, train=False)
    assert torch.equal(evaluated, reference)
    for a, b in zip(states.to_tensors(eval_state), states.to_tensors(reference_state)):
        assert torch.equal(a, b)


def test_regularisers_add_no_parameters_and_keep_the_state_dict_keys():
    plain = make()
    for options in [*REGULARISERS.values(), dict(dropout_kind="locked", dropout=0.2, weight_dropout=0.2)]:
        model = make(**options)
        assert list(model.state_dict()) == list(plain.state_dict())  # rnn.weight_hh_l0 ... as ever
        assert model.num_parameters() == plain.num_parameters() == count_parameters(model.config)
        plain.load_state_dict(model.state_dict())  # strict, both ways
        model.load_state_dict(plain.state_dict())


# ----- weight dropout -------------------------------------------------------------------


def test_weight_dropout_draws_one_mask_per_forward_call():
    model = make(weight_dropout=0.5)
    x, generator = inputs(steps=12)
    state = random_state(model, 3, generator)
    trained, trained_state = run(model, x, state)
    # the same draw again (weight masks come first), put into a plain model's weights
    torch.manual_seed(7)
    dropped = model.regularisers.dropped_weights(model.rnn)
    assert set(dropped) == {f"weight_hh_l{k}" for k in range(2)}
    fixed = twin(model, weight_dropout=0.0)
    with torch.no_grad():
        for name, tensor in dropped.items():
            assert 0.3 < (tensor == 0).float().mean().item() < 0.7
            getattr(fixed.rnn, name).copy_(tensor)
    # every step of every lane saw that one dropped matrix
    reference, reference_state = fixed.eval()(x, state)
    assert_close(trained, reference)
    for a, b in zip(states.to_tensors(trained_state), states.to_tensors(reference_state)):
        assert_close(a, b)


@pytest.mark.parametrize("kind", ["standard", "locked"])
def test_the_gradient_reaches_the_raw_weights_through_the_mask(kind):
    model = make(weight_dropout=0.5, dropout_kind=kind, dropout=0.1)
    x, generator = inputs()
    logits, _ = run(model, x, random_state(model, 3, generator))
    logits.logsumexp(-1).mean().backward()
    torch.manual_seed(7)
    dropped = model.regularisers.dropped_weights(model.rnn)
    for name, tensor in dropped.items():
        grad = getattr(model.rnn, name).grad
        kept = tensor != 0
        assert grad is not None
        assert torch.all(grad[~kept] == 0)  # a dropped weight takes no part, so gets no gradient
        assert (grad[kept] != 0).float().mean() > 0.9
    assert all(p.grad is not None for p in model.parameters())


def _profiled_ops(model: RNNLM, steps: int) -> list[str]:
    x, generator = inputs(steps=steps)
    state = random_state(model, 3, generator)
    model.train()
    with profile(use_kineto=False) as prof:  # the profiler without kineto starts in a tenth of the time
        model(x, state)
    return [event.name for event in prof.function_events]


@pytest.mark.parametrize(
    "options, calls", [(dict(weight_dropout=0.3), 1), (dict(dropout_kind="locked", dropout=0.3), 2)]
)
def test_the_fused_kernel_runs_the_whole_window(options, calls):
    model = make(**options)
    short, long = _profiled_ops(model, 4), _profiled_ops(model, 40)
    assert short.count("aten::lstm") == calls  # one fused call (per layer, when locked)
    assert "aten::lstm_cell" not in short
    assert len(long) == len(short)  # ten times the steps, not one more op: no per-step loop
    if "aten::mkldnn_rnn_layer" in short:  # oneDNN runs each layer over the whole window
        assert short.count("aten::mkldnn_rnn_layer") == 2


# ----- embedding dropout ----------------------------------------------------------------


def test_embedding_dropout_drops_whole_token_types():
    x = torch.arange(V).repeat(2, 3)[:, torch.randperm(3 * V, generator=torch.Generator().manual_seed(0))]  # (2, 3V)
    emb = torch.ones(*x.shape, 5)
    torch.manual_seed(3)
    out = token_dropout(emb, x, vocab_size=V, p=0.5)
    dropped = 0
    for token in range(V):
        values = out[x == token]  # its six occurrences, in both lanes: all dropped or all kept
        assert torch.all(values == values[0, 0]) and values[0, 0].item() in (0.0, 2.0)
        dropped += values[0, 0].item() == 0.0
    assert 0 < dropped < V


def test_embedding_dropout_is_a_masked_lookup_before_the_recurrent_stack():
    model = make(embed_dropout=0.3)
    x, generator = inputs()
    state = random_state(model, 3, generator)
    trained, _ = run(model, x, state)
    torch.manual_seed(7)
    emb = token_dropout(model.embedding(x), x, V, 0.3)
    out, _ = model.rnn(emb, state)
    assert_close(trained, model.head(out))


# ----- locked dropout -------------------------------------------------------------------


def test_locked_dropout_keeps_one_mask_for_every_step():
    x = torch.ones(4, 10, 6)
    torch.manual_seed(0)
    out = locked_dropout(x, 0.5)
    assert torch.equal(out, out[:, :1].expand_as(out))
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert not torch.equal(out[0], out[1]) or not torch.equal(out[1], out[2])  # lanes differ
    assert locked_dropout(x, 0.0) is x


def _one_layer(model: RNNLM, k: int) -> nn.LSTM:
    layer = nn.LSTM(model.config.embed if k == 0 else model.config.hidden, model.config.hidden, 1, batch_first=True)
    layer.load_state_dict({f"{name}_l0": getattr(model.rnn, f"{name}_l{k}") for name in
                           ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})  # fmt: skip
    return layer


def test_locked_dropout_masks_embeddings_layers_and_output_and_carries_the_state():
    p = 0.4
    model = make(dropout_kind="locked", dropout=p)
    x, generator = inputs()
    state = random_state(model, 3, generator)
    logits, (h, c) = run(model, x, state)
    # an independent reference: two one-layer modules, a (B, 1, D) mask before each and after
    layers = [_one_layer(model, k) for k in range(2)]  # built first: building draws random numbers
    torch.manual_seed(7)
    out = locked_dropout(model.embedding(x), p)
    layer_states = []
    for k, layer in enumerate(layers):
        out, layer_state = layer(out, (state[0][k : k + 1], state[1][k : k + 1]))
        out = locked_dropout(out, p)
        layer_states.append(layer_state)
    assert_close(logits, model.head(out))
    assert_close(h, torch.cat([s[0] for s in layer_states]))
    assert_close(c, torch.cat([s[1] for s in layer_states]))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn-relu"])
@pytest.mark.parametrize("layers", [1, 3])
def test_the_layer_by_layer_run_equals_the_one_module_run(cell, layers):
    config = ModelConfig(**{**BASE, "cell": cell, "layers": layers, "dropout_kind": "locked"})
    model = RNNLM(config)
    x, generator = inputs()
    state = random_state(model, 3, generator)
    one_by_one, new_state = Regularisers(config).forward(model.embedding, model.rnn, model.drop, x, state)
    reference, reference_state = model.rnn(model.embedding(x), state)
    assert_close(one_by_one, reference)
    assert [t.shape for t in states.to_tensors(new_state)] == [t.shape for t in states.to_tensors(state)]
    for a, b in zip(states.to_tensors(new_state), states.to_tensors(reference_state)):
        assert_close(a, b)
    without_state, _ = Regularisers(config).forward(model.embedding, model.rnn, model.drop, x, None)
    assert_close(without_state, model.rnn(model.embedding(x))[0])


# ----- runs: resume, old configs, options -----------------------------------------------


@pytest.mark.parametrize("kind", ["standard", "locked"])
def test_a_run_with_the_regularisers_on_resumes_bit_identically(tmp_path, kind):
    corpus = make_corpus(tmp_path, word_text(1600, seed=1), val_fraction=0.1)
    N = 8
    model = dict(layers=2, hidden=32, embed=16, dropout=0.2, dropout_kind=kind, weight_dropout=0.3, embed_dropout=0.1)
    train = dict(batch_size=4, seq_len=12, lr=5e-3, min_lr_ratio=1.0, warmup_steps=N + 5, eval_every=N,
                 log_every=1, checkpoint_every=1000, seed=5)  # fmt: skip
    whole = new_trainer(tmp_path / "a", corpus, model, {**train, "max_steps": 2 * N})
    assert whole.run().step == 2 * N
    assert new_trainer(tmp_path / "b", corpus, model, {**train, "max_steps": N}).run().step == N
    events: list[dict] = []
    resumed = resumed_trainer(tmp_path / "b", corpus, events=events, max_steps=2 * N)
    assert resumed.run().step == 2 * N and of_kind(events, "resume")[0]["step"] == N
    assert same_weights(whole.model, resumed.model)
    for a, b in zip(states.to_tensors(whole.state), states.to_tensors(resumed.state)):
        assert torch.equal(a, b)

    def losses(path: Path) -> list[tuple]:
        return [(e["step"], e["loss"]) for e in read_events(path) if e["event"] == "train" and e["step"] > N]

    assert losses(tmp_path / "a") == losses(tmp_path / "b") and len(losses(tmp_path / "a")) == N
    assert read_config(tmp_path / "b")["model"]["weight_dropout"] == 0.3


def test_a_config_json_from_before_the_regularisers_loads_with_them_off(tmp_path):
    corpus = make_corpus(tmp_path, word_text(800, seed=2))
    trainer = new_trainer(tmp_path / "run", corpus, train=dict(max_steps=2))
    trainer.run()
    path = tmp_path / "run" / "config.json"
    old = json.loads(path.read_text())
    for name in ("dropout_kind", "weight_dropout", "embed_dropout"):
        del old["model"][name]
    path.write_text(json.dumps(old))
    model_config = RunDirectory(tmp_path / "run").read_config().model
    assert (model_config.dropout_kind, model_config.weight_dropout, model_config.embed_dropout) == ("standard", 0, 0)
    assert RunConfig.from_dict(old).model == model_config
    model, _ = RunDirectory(tmp_path / "run").load_model(LAST)
    assert model.regularisers is None and same_weights(model, trainer.model)


@pytest.mark.parametrize(
    "field, bad",
    [("weight_dropout", 1.0), ("weight_dropout", -0.1), ("embed_dropout", 1.0), ("embed_dropout", -0.5),
     ("dropout_kind", "gaussian"), ("weight_dropout", "0.2")],
)  # fmt: skip
def test_bad_values_name_their_option(field, bad):
    with pytest.raises(OptionError) as caught:
        ModelShape(**{field: bad}).validate()
    assert caught.value.option == field
    with pytest.raises(OptionError) as caught:
        RNNLM(ModelConfig(vocab_size=V, **{field: bad}))
    assert caught.value.option == field


def test_a_bad_weight_dropout_on_the_command_line_names_the_flag(tmp_path):
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    out = tmp_path / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), *TINY, "--max-steps", "2",
                    "--weight-dropout", "1.5")  # fmt: skip
    assert "--weight-dropout" in assert_user_error(result)
    assert not out.exists()


def test_charlm_train_with_the_regularisers_runs_end_to_end(tmp_path):
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    out = tmp_path / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), *TINY, "--layers", "2", "--max-steps", "4",
                    "--sample-length", "20", "--weight-dropout", "0.2", "--embed-dropout", "0.1",
                    "--dropout-kind", "locked")  # fmt: skip
    assert result.exit_code == 0, result.output
    model = read_config(out)["model"]
    assert (model["weight_dropout"], model["embed_dropout"], model["dropout_kind"]) == (0.2, 0.1, "locked")
    assert of_kind(read_events(out), "end")[0]["step"] == 4
    assert result.stdout.strip()  # the closing sample, generated in eval mode from the raw weights
