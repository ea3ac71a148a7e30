"""charlm serve's HTTP API against a real server: uvicorn on 127.0.0.1, httpx and the openai client.

A tiny LSTM is trained for real; the server is the app `charlm serve` runs. Checked: the
OpenAI completion fields (plain, streamed, n, list prompts, stop, echo, logprobs, seeds),
that concurrent requests are batched and give each the text it gets alone, /v1/score's
figures against the Scorer's, /v1/inspect, the training curve, every error status with
OpenAI's error object, a disconnect that frees its stream, and a stop that ends streams.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import time

import httpx
import pytest
from helpers import train_tiny_run, word_text
from helpers.server import running_server

from charlm.inference.scorer import Scorer
from charlm.serve.settings import ServeSettings

openai = pytest.importorskip("openai")

MODEL = "tiny"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("serve"), word_text(6000), max_steps=40, batch_size=8,
                          seq_len=32, lr=1e-2, warmup_steps=5, eval_every=20, checkpoint_every=10_000,
                          log_every=5, eval_batch_size=4)  # fmt: skip


@pytest.fixture(scope="module")
def server(run):
    with running_server({MODEL: run}, ServeSettings(max_concurrent=16, max_tokens=2000)) as running:
        yield running


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def post(server, path, body, **extra):
    return httpx.post(server.url + path, json=body, timeout=60, **extra)


def completion(server, **body):
    response = post(server, "/v1/completions", {"model": MODEL, **body})
    assert response.status_code == 200, response.text
    return response.json()


# ----- completions --------------------------------------------------------------------------
def test_the_openai_client_lists_the_model_and_completes(client, run):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    info = models.data[0].model_extra["charlm"]
    assert (info["cell"], info["layers"], info["hidden"], info["tokenizer"]["kind"]) == ("lstm", 1, 32, "char")
    assert info["training"]["steps"] == 40
    done = client.completions.create(model=MODEL, prompt="the ", max_tokens=30, seed=3, temperature=0.9)
    assert done.object == "text_completion" and done.id.startswith("cmpl-") and done.model == MODEL
    (choice,) = done.choices
    assert choice.index == 0 and choice.finish_reason == "length" and len(choice.text) == 30
    assert done.usage.completion_tokens == 30 and done.usage.prompt_tokens == 4 and done.usage.total_tokens == 34


def test_a_streamed_completion_is_the_plain_one_in_pieces(client):
    pieces = list(client.completions.create(model=MODEL, prompt="a", max_tokens=40, seed=11, stream=True))
    text = "".join(p.choices[0].text for p in pieces if p.choices)
    plain_again = client.completions.create(model=MODEL, prompt="a", max_tokens=40, seed=11)
    assert text == plain_again.choices[0].text
    assert len(pieces) > 10  # it really streamed, a chunk per character
    assert pieces[-1].choices[0].finish_reason == "length"
    assert all(p.choices[0].finish_reason is None for p in pieces[:-1])
    top_k = client.completions.create(model=MODEL, prompt="a", max_tokens=40, seed=11, extra_body={"top_k": 1})
    greedy = client.completions.create(model=MODEL, prompt="a", max_tokens=40, extra_body={"greedy": True})
    assert top_k.choices[0].text == greedy.choices[0].text  # charlm's own fields, as the client sends them


def test_seeds_repeat_and_choices_differ(server):
    first = completion(server, prompt=["to ", "and "], n=2, max_tokens=25, seed=5)
    again = completion(server, prompt=["to ", "and "], n=2, max_tokens=25, seed=5)
    texts = [c["text"] for c in first["choices"]]
    assert [c["index"] for c in first["choices"]] == [0, 1, 2, 3]
    assert texts == [c["text"] for c in again["choices"]]
    assert len(set(texts)) == 4
    assert first["usage"]["prompt_tokens"] == 3 + 4  # each prompt once, whatever n is
    other = completion(server, prompt="to ", max_tokens=25, seed=6)
    assert other["choices"][0]["text"] != texts[0]


def test_stop_strings_end_the_text_before_them(server):
    greedy = completion(server, prompt="the", max_tokens=80, greedy=True)["choices"][0]["text"]
    stop = greedy[20:23]
    cut = greedy.index(stop)
    stopped = completion(server, prompt="the", max_tokens=80, greedy=True, stop=[stop, "\x00never"])
    assert stopped["choices"][0] == {"text": greedy[:cut], "index": 0, "logprobs": None, "finish_reason": "stop"}
    assert (
        completion(server, prompt="the", max_tokens=80, temperature=0, stop=stop)["choices"][0]["text"]
        == (greedy[:cut])
    )


def test_echo_and_logprobs_cover_every_token(server):
    done = completion(server, prompt="and the", max_tokens=12, echo=True, logprobs=3, seed=2)
    choice = choice_of(done)
    assert choice["text"].startswith("and the") and len(choice["text"]) == 7 + 12
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"] == list(range(len(choice["text"])))
    assert logprobs["token_logprobs"][0] is None  # nothing predicts the first prompt token
    assert all(lp <= 0 for lp in logprobs["token_logprobs"][1:])
    for token, chosen, top in zip(logprobs["tokens"][1:], logprobs["token_logprobs"][1:], logprobs["top_logprobs"][1:]):
        assert len(top) == 3 and max(top.values()) >= chosen - 1e-6
        if token in top:
            assert math.isclose(top[token], chosen, abs_tol=1e-5)
    plain = choice_of(completion(server, prompt="and the", max_tokens=12, seed=2, logprobs=0))
    assert plain["text"] == choice["text"][7:] and plain["logprobs"]["top_logprobs"] is None


def choice_of(response):
    (choice,) = response["choices"]
    return choice


def test_concurrent_requests_are_batched_and_each_gets_its_own_text(server):
    worker = server.service.models[MODEL].worker
    bodies = [dict(prompt=f"{word} ", max_tokens=60, seed=seed, temperature=1.0, top_p=0.95)
              for seed, word in enumerate(["the", "a", "to", "of", "and", "in", "it", "is"])]  # fmt: skip
    alone = [choice_of(completion(server, **body))["text"] for body in bodies]
    before = worker.steps
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda body: choice_of(completion(server, **body))["text"], bodies))
    steps = worker.steps - before
    assert together == alone
    assert steps < 60 * len(bodies) / 2, steps  # the eight shared steps instead of taking 480


def test_max_tokens_zero_and_the_default_length(server):
    assert choice_of(completion(server, prompt="x", max_tokens=0)) == {
        "text": "", "index": 0, "logprobs": None, "finish_reason": "length"}  # fmt: skip
    assert len(choice_of(completion(server, prompt="the"))["text"]) == 16  # OpenAI's default


# ----- score, inspect, metrics ---------------------------------------------------------------
def test_score_gives_the_figures_of_charlm_perplexity(server, run):
    text = word_text(400, seed=9)
    scored = post(server, "/v1/score", {"model": MODEL, "text": text, "token_logprobs": True}).json()
    expected = Scorer(run).score_text(text)
    assert scored["tokens"] == expected.tokens and scored["chars"] == len(text)
    for field, value in [("loss", expected.loss), ("perplexity", expected.perplexity),
                         ("bits_per_char", expected.bits_per_char), ("bits_per_byte", expected.bits_per_byte)]:  # fmt: skip
        assert math.isclose(scored[field], value, rel_tol=1e-5), field
    per_token = scored["token_logprobs"]
    assert "".join(t["text"] for t in per_token) == text
    assert math.isclose(-sum(t["logprob"] for t in per_token) / len(per_token), expected.loss, rel_tol=1e-4)


def test_inspect_gives_surprise_and_a_units_activation_per_token(server):
    text = 'the "cat" and the dog\n'
    seen = post(server, "/v1/inspect", {"model": MODEL, "text": text, "state": "cell", "top": 5}).json()
    assert (seen["layers"], seen["units"], seen["states"], seen["layer"]) == (1, 32, ["hidden", "cell"], 0)
    assert "".join(t["text"] for t in seen["tokens"]) == text
    assert len(seen["activations"]) == len(text)
    assert [r["unit"] for r in seen["ranking"]["active"]][0] == seen["unit"]
    assert len(seen["ranking"]["changing"]) == 5
    scores = [r["score"] for r in seen["ranking"]["active"]]
    assert scores == sorted(scores, reverse=True)
    hidden = post(server, "/v1/inspect", {"model": MODEL, "text": text, "unit": 7}).json()
    assert hidden["unit"] == 7 and all(-1 <= a <= 1 for a in hidden["activations"])  # h = o * tanh(c)
    assert hidden["activations"] != seen["activations"]
    scored = post(server, "/v1/score", {"model": MODEL, "text": text, "token_logprobs": True}).json()
    for a, b in zip(seen["tokens"], scored["token_logprobs"]):
        assert math.isclose(a["logprob"], b["logprob"], abs_tol=1e-4)


def test_the_training_curve_comes_from_the_journal(server):
    curve = httpx.get(f"{server.url}/v1/models/{MODEL}/metrics").json()
    assert [p["step"] for p in curve["train"]] == list(range(5, 41, 5))
    assert [p["step"] for p in curve["val"]] == [20, 40]
    assert all(p["loss"] > 0 and p["elapsed"] >= 0 for p in curve["train"] + curve["val"])


def test_the_playground_and_its_files_are_served(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text.lower()


# ----- errors ----------------------------------------------------------------------------------
BAD_FIELDS = [
    ({"max_tokens": "10"}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 10**12}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -3}, "top_k"),
    ({"n": 0}, "n"),
    ({"n": 1000}, "n"),
    ({"stop": [1, 2]}, "stop"),
    ({"stop": ["a"] * 100}, "stop"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": "x" * 40_000}, "prompt"),
    ({"logprobs": 500}, "logprobs"),
    ({"seed": "one"}, "seed"),
    ({"stream": "yes"}, "stream"),
    ({"echo": 1}, "echo"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"best_of": 3}, "best_of"),
    ({"stream_options": []}, "stream_options"),
    ({"model": 7}, "model"),
]


@pytest.mark.parametrize("fields, param", BAD_FIELDS, ids=[p + "-" + json.dumps(f)[:30] for f, p in BAD_FIELDS])
def test_a_bad_field_is_a_400_naming_it(server, fields, param):
    response = post(server, "/v1/completions", {"model": MODEL, "prompt": "a", **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["type"] == "invalid_request_error" and param in error["message"]


@pytest.mark.parametrize(
    "body, words",
    [
        (b'{"model": "tiny", "prompt": "a", "temperature": NaN}', "NaN"),
        (b'{"model": "tiny", "prompt": "a", "temperature": Infinity}', "Infinity"),
        (b'{"model": "tiny", "prompt": "a"', "not valid JSON"),
        (b'["model", "tiny"]', "JSON object"),
        (b'{"model": "tiny", "prompt": "\xff\xfe"}', "UTF-8"),
        (b'{"model": "tiny", "prompt": "\\ud800"}', "surrogate"),
        (b"", "not valid JSON"),
    ],
    ids=["nan", "inf", "truncated", "array", "bad-utf8", "surrogate", "empty"],
)
def test_bodies_that_are_not_clean_json_objects_are_a_400(server, body, words):
    response = httpx.post(server.url + "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and words in response.json()["error"]["message"], response.text


def test_unknown_fields_are_ignored_as_openai_does(server):
    assert choice_of(completion(server, prompt="a", max_tokens=3, some_new_field={"x": 1}))["finish_reason"] == "length"


def test_unknown_models_and_paths_are_404_and_methods_405(server):
    missing = post(server, "/v1/completions", {"model": "nope", "prompt": "a"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
    assert "tiny" in missing.json()["error"]["message"]  # the served models are named
    assert httpx.get(server.url + "/v1/models/nope").status_code == 404
    path = httpx.get(server.url + "/v1/chat/nothing")
    assert path.status_code == 404 and "error" in path.json()
    method = httpx.get(server.url + "/v1/completions")
    assert method.status_code == 405 and "GET" in method.json()["error"]["message"]


def test_a_body_over_the_limit_is_a_413_declared_or_streamed(run):
    with running_server({MODEL: run}, ServeSettings(max_body_bytes=1000)) as small:
        big = {"model": MODEL, "prompt": "a" * 2000}
        response = post(small, "/v1/completions", big)
        assert response.status_code == 413 and "1,000 bytes" in response.json()["error"]["message"]

        def chunks():  # no Content-Length: the server counts as it reads
            for _ in range(10):
                yield b" " * 200

        streamed = httpx.post(small.url + "/v1/completions", content=chunks(), timeout=30)
        assert streamed.status_code == 413


def test_an_api_key_is_required_on_the_api_but_not_the_page(run):
    with running_server({MODEL: run}, ServeSettings(api_key="s3cret")) as locked:
        for response in [httpx.get(locked.url + "/v1/models"),
                         post(locked, "/v1/completions", {"model": MODEL}),
                         post(locked, "/v1/score", {"model": MODEL, "text": "a"},
                              headers={"Authorization": "Bearer wrong"})]:  # fmt: skip
            assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
        keyed = openai.OpenAI(base_url=locked.url + "/v1", api_key="s3cret", max_retries=0)
        assert keyed.completions.create(model=MODEL, prompt="a", max_tokens=2).choices[0].finish_reason == "length"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=locked.url + "/v1", api_key="nope", max_retries=0).models.list()
        assert httpx.get(locked.url + "/").status_code == 200


def test_past_the_concurrency_limit_a_429_and_a_disconnect_frees_the_slot(run):
    with running_server({MODEL: run}, ServeSettings(max_concurrent=2, max_tokens=2_000_000)) as tight:
        worker = tight.service.models[MODEL].worker
        long = {"model": MODEL, "prompt": "a", "max_tokens": 2_000_000, "stream": True}
        with httpx.Client(timeout=30) as one, httpx.Client(timeout=30) as two:
            with one.stream("POST", tight.url + "/v1/completions", json=long) as first:
                first_lines = first.iter_lines()  # kept: closing the iterator closes the connection
                next(first_lines)
                too_many = post(tight, "/v1/completions", {"model": MODEL, "prompt": "a", "n": 2})
                assert too_many.status_code == 429, too_many.text
                assert too_many.json()["error"]["type"] == "rate_limit_error"
                with two.stream("POST", tight.url + "/v1/completions", json=long) as second:
                    second_lines = second.iter_lines()
                    next(second_lines)
                    assert worker.active == 2
            # both connections are closed: the streams stop costing compute within a step or so
            deadline = time.monotonic() + 10
            while (worker.active or tight.service.slots.used) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert worker.active == 0 and tight.service.slots.used == 0
            steps = worker.steps
            time.sleep(0.3)
            assert worker.steps == steps  # nothing is being generated for nobody
        assert len(completion(tight, prompt="a", max_tokens=3, n=2)["choices"]) == 2


def test_stopping_the_server_ends_streams_with_a_finish_reason(run):
    with running_server({MODEL: run}, ServeSettings(max_tokens=2_000_000)) as stopping:
        lines = []
        with httpx.Client(timeout=30) as http:
            body = {"model": MODEL, "prompt": "a", "max_tokens": 2_000_000, "stream": True}
            with http.stream("POST", stopping.url + "/v1/completions", json=body) as response:
                for line in response.iter_lines():
                    lines.append(line)
                    if len(lines) == 3:
                        stopping.service.stop(wait=False)
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        assert [line for line in lines if line][-1] == "data: [DONE]"
        assert events[-1]["choices"][0]["finish_reason"] == "abort"
        refused = post(stopping, "/v1/completions", {"model": MODEL, "prompt": "a"})
        assert refused.status_code == 503


def test_a_worker_that_fails_answers_every_client_instead_of_hanging(run):
    with running_server({MODEL: run}) as broken:
        stepper = broken.service.models[MODEL].generator.stepper

        def failing_step(tokens, state):
            raise RuntimeError("the device is gone")

        stepper.step = failing_step  # a stand-in for a device failure in the middle of a step
        plain = post(broken, "/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": 5})
        assert plain.status_code == 500 and plain.json()["error"]["type"] == "server_error"
        assert "Traceback" not in plain.text
        streamed = post(broken, "/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": 5, "stream": True})
        lines = [line for line in streamed.text.splitlines() if line]
        assert lines[-1] == "data: [DONE]" and "the model worker failed" in lines[-2]
        later = post(broken, "/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": 5})
        assert later.status_code == 500  # answered at once, not left waiting on a dead thread


def test_a_byte_level_gru_serves_whole_characters(tmp_path_factory):
    text = word_text(3000) + " naïve café — 東京 🙂\n" * 40
    byte_run = train_tiny_run(tmp_path_factory.mktemp("bytes"), text, tokenizer="byte", max_steps=30, batch_size=8,
                              seq_len=32, lr=1e-2, warmup_steps=5, eval_every=30, checkpoint_every=10_000,
                              log_every=10, eval_batch_size=4, model={"cell": "gru"})  # fmt: skip
    with running_server({"bytes": byte_run}) as served:
        done = post(served, "/v1/completions", {"model": "bytes", "prompt": "東", "max_tokens": 60, "seed": 1,
                                                "echo": True, "logprobs": 1}).json()  # fmt: skip
        choice = choice_of(done)
        assert choice["text"].startswith("東") and "\ufffd" not in choice["text"]
        assert "".join(t for t in choice["logprobs"]["tokens"] if not t.startswith("bytes:")) != ""
        sample = "café 🙂 東京"
        scored = post(served, "/v1/score", {"model": "bytes", "text": sample, "token_logprobs": True}).json()
        assert scored["tokens"] == len(sample.encode("utf-8")) and scored["chars"] == len(sample)
        assert "".join(t["text"] for t in scored["token_logprobs"]) == sample  # each character on the byte ending it
        seen = post(served, "/v1/inspect", {"model": "bytes", "text": sample}).json()
        assert seen["states"] == ["hidden"] and len(seen["activations"]) == len(sample.encode("utf-8"))
        cell = post(served, "/v1/inspect", {"model": "bytes", "text": sample, "state": "cell"})
        assert cell.status_code == 400 and cell.json()["error"]["param"] == "state"
