"""SequenceClassifier and transfer_from_lm (charlm.models.classifier), on real torch modules.

* Padding: a padded batch of texts of different lengths gives each text what it gives alone,
  for every cell, both directions and every pooling, two layers; a one-direction model read
  in windows shorter than its texts gives what one window over the whole text gives.
* The figures are the textbook ones: every pooling of the encoder's outputs equals the same
  pooling of torch's own multi-layer (bidirectional) nn.LSTM / nn.GRU / nn.RNN, run with the
  classifier's weights over the unpadded text; the backward direction is its module run over
  the reversed text.
* Attention weights (explain): (B, T), a softmax over each text's real positions, 0 on the
  padding; explain on another pooling returns the logits alone.
* transfer_from_lm: the embedding and recurrent weights are the language model's (same names
  with one direction; forward_layers.k from rnn.*_lk with two, the columns reading the
  backward half zero), so the forward direction computes the language model's features;
  shapes that disagree are refused.
* Training mode: the gradient reaches every parameter, for both directions and every pooling.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from charlm.classifier_config import POOLINGS, ClassifierConfig
from charlm.config import CELLS, ModelConfig
from charlm.errors import CharlmError
from charlm.models.classifier import SequenceClassifier, reverse_within, transfer_from_lm
from charlm.models.rnnlm import RNNLM

V = 11  # vocabulary
LENGTHS = [7, 1, 12, 4, 9]


def make(cell: str = "lstm", bidirectional: bool = True, pooling: str = "concat", layers: int = 2, seed: int = 0,
         dropout: float = 0.1, hidden: int = 6, embed: int = 5) -> SequenceClassifier:  # fmt: skip
    torch.manual_seed(seed)
    config = ClassifierConfig(vocab_size=V, labels=["x", "y", "z"], cell=cell, layers=layers, hidden=hidden,
                              embed=embed, dropout=dropout, bidirectional=bidirectional, pooling=pooling)  # fmt: skip
    return SequenceClassifier(config).eval()


def texts(lengths=LENGTHS, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=generator) for n in lengths]


def padded(items: list[torch.Tensor], extra: int = 0, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids padded with random tokens (the model must ignore whatever sits there), T the
    longest length plus `extra`, and the (B,) lengths."""
    T = max(len(t) for t in items) + extra
    x = torch.randint(0, V, (len(items), T), generator=torch.Generator().manual_seed(seed))
    for i, t in enumerate(items):
        x[i, : len(t)] = t
    return x, torch.tensor([len(t) for t in items])


def alone(model: SequenceClassifier, text: torch.Tensor, explain: bool = False):
    with torch.no_grad():
        return model(text.unsqueeze(0), torch.tensor([len(text)]), explain=explain)


ALL_SHAPES = [(cell, bi, pooling) for cell in CELLS for bi in (False, True) for pooling in POOLINGS]


def _shape_id(shape) -> str:
    cell, bi, pooling = shape
    return f"{cell}-{'bi' if bi else 'uni'}-{pooling}"


# ----- padding -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ALL_SHAPES, ids=_shape_id)
def test_a_padded_batch_gives_each_text_what_it_gives_alone(shape):
    cell, bidirectional, pooling = shape
    model = make(cell, bidirectional, pooling)
    items = texts()
    expected = torch.cat([alone(model, t) for t in items])  # (B, C)
    for extra in (0, 3):  # padded to the longest text, and wider than it
        x, lengths = padded(items, extra)
        with torch.no_grad():
            logits = model(x, lengths)
        assert logits.shape == (len(items), 3)
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    if not bidirectional:  # windows of 3 tokens: every text but one is read in several
        model.window = 3
        x, lengths = padded(items, 2)
        with torch.no_grad():
            windowed = model(x, lengths)
        torch.testing.assert_close(windowed, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.cat([alone(model, t) for t in items]), expected, atol=1e-5, rtol=0)


def test_the_window_does_not_change_the_figures_of_a_long_text():
    model = make("gru", bidirectional=False, pooling="attention", layers=2)
    items = texts([40, 23, 5])
    x, lengths = padded(items)
    with torch.no_grad():
        whole, whole_weights = model(x, lengths, explain=True)
        for window in (1, 4, 7, 40):
            model.window = window
            logits, weights = model(x, lengths, explain=True)
            torch.testing.assert_close(logits, whole, atol=1e-5, rtol=0)
            torch.testing.assert_close(weights, whole_weights, atol=1e-6, rtol=0)


def test_reverse_within_reverses_each_row_inside_its_length_and_is_its_own_inverse():
    x = torch.arange(12).view(2, 6)
    lengths = torch.tensor([4, 6])
    flipped = reverse_within(x, lengths)
    assert flipped.tolist() == [[3, 2, 1, 0, 4, 5], [11, 10, 9, 8, 7, 6]]
    assert torch.equal(reverse_within(flipped, lengths), x)
    features = torch.randn(2, 6, 3)
    assert torch.equal(reverse_within(features, lengths)[0, :4], features[0, :4].flip(0))


# ----- against torch's own modules ------------------------------------------------------------

_TORCH_CELLS = {"lstm": (nn.LSTM, {}), "gru": (nn.GRU, {}), "rnn-tanh": (nn.RNN, {"nonlinearity": "tanh"}),
                "rnn-relu": (nn.RNN, {"nonlinearity": "relu"})}  # fmt: skip


def reference_module(model: SequenceClassifier) -> nn.RNNBase:
    """torch's own multi-layer module (bidirectional when the model is) holding the model's
    recurrent weights: layer k's reverse direction is backward_layers[k]."""
    c = model.config
    kind, options = _TORCH_CELLS[c.cell]
    ref = kind(c.embed, c.hidden, c.layers, batch_first=True, bidirectional=c.bidirectional, **options)
    weights = {}
    if c.bidirectional:
        for k in range(c.layers):
            for name, value in model.forward_layers[k].state_dict().items():
                weights[name.replace("_l0", f"_l{k}")] = value
            for name, value in model.backward_layers[k].state_dict().items():
                weights[name.replace("_l0", f"_l{k}_reverse")] = value
    else:
        weights = model.rnn.state_dict()
    ref.load_state_dict(weights)
    return ref.eval()


def reference_logits(model: SequenceClassifier, text: torch.Tensor) -> torch.Tensor:
    """The model's logits for one text, from torch's module and the pooling written out."""
    H, pooling = model.config.hidden, model.config.pooling
    with torch.no_grad():
        out, _ = reference_module(model)(model.embedding(text.unsqueeze(0)))
        out = out[0]  # (T, D)
        if model.config.bidirectional:  # forward after the last token, backward after the first
            last = torch.cat([out[-1, :H], out[0, H:]])
        else:
            last = out[-1]
        pooled = {
            "last": last,
            "mean": out.mean(0),
            "max": out.amax(0),
            "concat": torch.cat([last, out.amax(0), out.mean(0)]),
        }.get(pooling)
        if pooling == "attention":
            weights = torch.softmax(model.attention(out).squeeze(-1), dim=0)  # (T,)
            pooled = (weights.unsqueeze(1) * out).sum(0)
        return model.head(pooled).unsqueeze(0)


@pytest.mark.parametrize("shape", ALL_SHAPES, ids=_shape_id)
def test_every_pooling_is_that_of_torchs_own_module_over_the_unpadded_text(shape):
    cell, bidirectional, pooling = shape
    model = make(cell, bidirectional, pooling)
    items = texts()
    x, lengths = padded(items, extra=2)
    with torch.no_grad():
        logits = model(x, lengths)
    expected = torch.cat([reference_logits(model, t) for t in items])
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_last_pooling_of_two_directions_is_the_forward_end_and_the_backward_start(cell):
    """One layer: the backward half of `last` is the backward module run over the reversed
    text, at its final step; the forward half is the forward module's final output."""
    model = make(cell, bidirectional=True, pooling="last", layers=1)
    text = texts([8])[0]
    with torch.no_grad():
        emb = model.embedding(text.unsqueeze(0))
        ahead, _ = model.forward_layers[0](emb)
        behind, _ = model.backward_layers[0](emb.flip(1))
        expected = model.head(torch.cat([ahead[0, -1], behind[0, -1]])).unsqueeze(0)
        torch.testing.assert_close(model(*padded([text, texts([3])[0]]))[:1], expected, atol=1e-5, rtol=0)


# ----- attention weights -----------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True])
def test_attention_weights_are_a_softmax_over_each_texts_real_positions(bidirectional):
    model = make("lstm", bidirectional, "attention")
    items = texts()
    for window in (256, 3):
        model.window = window
        for extra in (0, 4):
            x, lengths = padded(items, extra)
            with torch.no_grad():
                logits, weights = model(x, lengths, explain=True)
            assert logits.shape == (5, 3) and weights.shape == x.shape
            real = torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
            assert bool((weights[~real] == 0).all()) and bool((weights[real] > 0).all())
            torch.testing.assert_close(weights.sum(1), torch.ones(5), atol=1e-6, rtol=0)
            for i, t in enumerate(items):  # each text's weights are those it has alone
                _, own = alone(model, t, explain=True)
                torch.testing.assert_close(weights[i, : len(t)], own[0], atol=1e-6, rtol=0)
            torch.testing.assert_close(model(x, lengths), logits)  # explain changes nothing else


@pytest.mark.parametrize("pooling", [p for p in POOLINGS if p != "attention"])
def test_explain_on_another_pooling_returns_the_logits_alone(pooling):
    model = make("gru", True, pooling)
    x, lengths = padded(texts())
    with torch.no_grad():
        out = model(x, lengths, explain=True)
        assert isinstance(out, torch.Tensor) and torch.equal(out, model(x, lengths))


def test_bad_inputs_are_refused():
    model = make()
    x, lengths = padded(texts())
    with pytest.raises(CharlmError, match="every text must have from 1 to T tokens"):
        model(x, torch.tensor([0, 1, 2, 3, 4]))
    with pytest.raises(CharlmError, match="every text must have from 1 to T tokens"):
        model(x, lengths + x.shape[1])
    with pytest.raises(CharlmError, match="must be \\(B, T\\) ids"):
        model(x[0], lengths)


# ----- transfer from a language model ------------------------------------------------------------


def language_model(cell: str = "lstm", layers: int = 2, hidden: int = 6, embed: int = 5) -> RNNLM:
    torch.manual_seed(7)
    return RNNLM(ModelConfig(vocab_size=V, cell=cell, layers=layers, hidden=hidden, embed=embed, dropout=0.0)).eval()


def top_forward_outputs(model: SequenceClassifier, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The outputs (B, T, H) of the classifier's top forward-direction layer on x."""
    seen = []
    layer = model.forward_layers[-1] if model.config.bidirectional else model.rnn
    handle = layer.register_forward_hook(lambda module, args, output: seen.append(output[0]))
    try:
        with torch.no_grad():
            model(x, lengths)
    finally:
        handle.remove()
    return torch.cat(seen, dim=1)  # one direction may read in windows: their outputs one after another


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_transfer_copies_the_language_models_weights_and_features(cell, bidirectional):
    lm = language_model(cell)
    lm_weights = lm.state_dict()
    model = make(cell, bidirectional, "attention", seed=3)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    taken = transfer_from_lm(model, lm_weights)
    own = model.state_dict()
    recurrent = [name for name in lm_weights if name.startswith("rnn.")]
    assert len(recurrent) == 8  # two layers of weight_ih, weight_hh, bias_ih, bias_hh
    assert torch.equal(own["embedding.weight"], lm_weights["embedding.weight"])
    if not bidirectional:  # laid out as the language model: the same names
        assert sorted(taken) == sorted(["embedding.weight"] + recurrent)
        for name in recurrent:
            assert torch.equal(own[name], lm_weights[name]), name
    else:
        expected = {"embedding.weight"}
        for name in recurrent:
            kind, layer = name[len("rnn.") :].rsplit("_l", 1)
            target = f"forward_layers.{layer}.{kind}_l0"
            expected.add(target)
            value = lm_weights[name]
            if kind == "weight_ih" and layer != "0":  # reads both directions of the layer below
                H = model.config.hidden
                assert own[target].shape == (value.shape[0], 2 * H)
                assert torch.equal(own[target][:, :H], value) and bool((own[target][:, H:] == 0).all())
            else:
                assert torch.equal(own[target], value), target
        assert set(taken) == expected
        for name, value in own.items():  # the backward direction keeps its fresh start
            if name.startswith("backward_layers."):
                assert torch.equal(value, before[name]), name
    for name in ("head.weight", "head.bias", "attention.weight"):
        assert torch.equal(own[name], before[name]), name
    # the forward direction computes the language model's features, at every position
    x, lengths = padded(texts([9, 30, 4]))
    with torch.no_grad():
        theirs, _ = lm.rnn(lm.embedding(x))  # (B, T, H) of the top layer
    torch.testing.assert_close(top_forward_outputs(model, x, lengths), theirs, atol=1e-5, rtol=0)
    model.window = 8  # one direction: a text read in windows, the state carried
    ours = top_forward_outputs(model, x[1:2], lengths[1:2])
    torch.testing.assert_close(ours, theirs[1:2], atol=1e-5, rtol=0)


def test_transfer_of_disagreeing_shapes_is_refused():
    cases = [
        (language_model(hidden=8), make()),  # hidden width
        (language_model(embed=4), make()),  # embedding width
        (language_model(cell="gru"), make("lstm")),  # cell
        (language_model(layers=1), make(layers=2)),  # layers
        (language_model(layers=2), make(layers=1)),
        (language_model(layers=3), make(bidirectional=True, layers=2)),
    ]
    for lm, model in cases:
        with pytest.raises(CharlmError, match="the classifier must take the language model's shape"):
            transfer_from_lm(model, lm.state_dict())
    lm = language_model()
    wider = RNNLM(ModelConfig(vocab_size=V + 3, cell="lstm", layers=2, hidden=6, embed=5, dropout=0.0))
    with pytest.raises(CharlmError, match=r"embedding\.weight is \(14, 5\) but the classifier needs \(11, 5\)"):
        transfer_from_lm(make(), wider.state_dict())
    transfer_from_lm(make(), lm.state_dict())  # the same shape is accepted


# ----- training mode -----------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_the_gradient_reaches_every_parameter(bidirectional, pooling):
    model = make("lstm", bidirectional, pooling, dropout=0.2).train()
    model.window = 4  # one direction: the gradient also crosses windows
    x, lengths = padded(texts(), extra=2)
    loss = F.cross_entropy(model(x, lengths), torch.tensor([0, 1, 2, 0, 1]))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert bool(torch.isfinite(parameter.grad).all()) and float(parameter.grad.abs().sum()) > 0, name


def test_padding_tokens_get_no_gradient():
    model = make("gru", True, "concat", dropout=0.0).train()
    items = [torch.tensor([1, 2, 3, 4, 5, 6]), torch.tensor([1, 2])]
    x, lengths = padded(items)
    x[1, 2:] = 9  # a token only the padding holds
    F.cross_entropy(model(x, lengths), torch.tensor([0, 1])).backward()
    grad = model.embedding.weight.grad
    assert float(grad[9].abs().sum()) == 0 and float(grad[1].abs().sum()) > 0
