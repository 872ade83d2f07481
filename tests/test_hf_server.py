"""The Hugging Face integrations as a server uses them: threads, generate() options, caches across turns, copies.

Each test reproduces one way the integrations used to differ silently from the
stock model (issue: "Hugging Face integrations you can trust in a server").
The LLM is re-drawn with std 0.3 (``tiny_lvlm.sharpen``) so its greedy tokens
depend on which visual tokens it sees; tests that rely on it check that
another selection gives other tokens.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

import _lvlm_models as lm  # noqa: E402
import transformers  # noqa: E402
from _lvlm_models import tl  # noqa: E402
from _threads import run_in_threads  # noqa: E402

from litelvlm_kernels.integrations.hf import LiteLVLMPruner, vision_tower  # noqa: E402

M = tl.M
R = 8
EXPRS = [["the cat"], ["a red car", "the man on the left"]]
OTHER = [["the tree"], ["a dog", "the sky"]]


@pytest.fixture(scope="module")
def model():
    return lm.lvlm("llava", llm_std=0.3)


@pytest.fixture(scope="module")
def batch():
    return lm.llava_batch()


enable, greedy = lm.enable, lm.greedy


# --------------------------------------------------------------------------- threads


def test_pruner_shared_by_threads_equals_serial():
    """2 threads x 200 calls on one pruner, two images with their own texts: every selection as serial."""
    pruner = LiteLVLMPruner(lm.clip(), tokenizer=lm.tokenizer())
    inputs = [(lm.pixels(1, 3, tl.IMAGE, tl.IMAGE, seed=s), e) for s, e in ((5, ["the cat"]), (6, ["a red car"]))]
    with torch.no_grad():
        serial = [pruner.prune(px, texts=e, num_retain=R).indices for px, e in inputs]
        got = run_in_threads(lambda i: pruner.prune(inputs[i][0], texts=inputs[i][1], num_retain=R).indices,
                             [i % 2 for i in range(400)])
    assert not torch.equal(serial[0], serial[1])  # the two calls differ, so a mix-up would show
    assert all(torch.equal(g, serial[i % 2]) for i, g in enumerate(got))


def test_patched_model_shared_by_threads_equals_serial(model, batch):
    """2 threads x 200 forwards on one patched model; each thread's last_report is its own call's."""
    calls = [batch, dict(batch, pixel_values=lm.pixels(3, 3, tl.IMAGE, tl.IMAGE, seed=9))]
    exprs = [EXPRS, OTHER]
    with torch.no_grad(), enable(model, num_retain=R) as patch:
        serial = [model(**calls[j], referring_expressions=exprs[j]).logits for j in range(2)]
        serial_views = []
        for j in range(2):
            model(**calls[j], referring_expressions=exprs[j])
            serial_views.append([v[0]["indices"] for v in patch.last_report["image"]["views"]])

        def call(j):
            logits = model(**calls[j], referring_expressions=exprs[j]).logits
            return logits, [v[0]["indices"] for v in patch.last_report["image"]["views"]]

        got = run_in_threads(call, [i % 2 for i in range(400)])
        gen = run_in_threads(lambda j: greedy(model, calls[j], referring_expressions=exprs[j]), [0, 1, 0, 1])
        serial_gen = [greedy(model, calls[j], referring_expressions=exprs[j]) for j in range(2)]
    assert not torch.equal(serial[0], serial[1])
    for i, (logits, views) in enumerate(got):
        assert torch.equal(logits, serial[i % 2]), i
        assert all(torch.equal(a, b) for a, b in zip(views, serial_views[i % 2])), i
    assert all(torch.equal(g, serial_gen[i % 2]) for i, g in enumerate(gen))


# --------------------------------------------------------------------------- generate() options


def test_lengths_count_the_callers_prompt(model, batch):
    """max_length / min_length (call, positional GenerationConfig, model.generation_config) mean what they mean
    on the stock model: total length of the caller's prompt + new tokens."""
    L = batch["input_ids"].shape[1]
    with torch.no_grad():
        stock = model.generate(**batch, max_length=L + 5, do_sample=False)
        with enable(model, num_retain=R):
            by_call = model.generate(**batch, max_length=L + 5, do_sample=False, referring_expressions=EXPRS)
            new5 = greedy(model, batch, max_new_tokens=5, referring_expressions=EXPRS)
            positional = model.generate(batch["input_ids"], transformers.GenerationConfig(max_length=L + 5),
                                        attention_mask=batch["attention_mask"],
                                        pixel_values=batch["pixel_values"], referring_expressions=EXPRS)
            saved = model.generation_config
            model.generation_config = copy.deepcopy(saved)
            model.generation_config.max_length = L + 5
            try:
                from_model = model.generate(**batch, do_sample=False, referring_expressions=EXPRS)
            finally:
                model.generation_config = saved
            # min_length with an [EOS]: the first token the model emits once allowed to stop
            free = greedy(model, batch, max_new_tokens=6, referring_expressions=EXPRS)
            eos = int(free[0, L])  # row 0 would stop at once
            by_min_length = greedy(model, batch, max_new_tokens=6, min_length=L + 3, eos_token_id=eos,
                                   pad_token_id=0, referring_expressions=EXPRS)
            by_min_new = greedy(model, batch, max_new_tokens=6, min_new_tokens=3, eos_token_id=eos,
                                pad_token_id=0, referring_expressions=EXPRS)
    assert stock.shape[1] == L + 5
    for out in (by_call, positional, from_model):
        assert out.shape == (2, L + 5)
        assert torch.equal(out, new5)
    assert torch.equal(by_min_length, by_min_new)
    assert (by_min_new[0, L:L + 3] != eos).all()


def test_positional_arguments_are_bound_by_name(model, batch):
    """generate(ids, GenerationConfig(...), ...) prunes as the keyword form does (it used to skip pruning)."""
    cfg = transformers.GenerationConfig(max_new_tokens=4, do_sample=False)
    with torch.no_grad(), enable(model, num_retain=R) as patch:
        want = greedy(model, batch, referring_expressions=EXPRS)
        patch.last_report = None
        got = model.generate(batch["input_ids"], cfg, attention_mask=batch["attention_mask"],
                             pixel_values=batch["pixel_values"], referring_expressions=EXPRS)
        assert patch.last_report is not None and patch.last_report["image"]["kept"] == [R] * 3
        logits = model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"],
                       referring_expressions=EXPRS).logits
        assert torch.equal(logits, model(**batch, referring_expressions=EXPRS).logits)
        with pytest.raises(ValueError, match="inputs"):
            model.generate(batch["input_ids"], input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                           referring_expressions=EXPRS)
    assert torch.equal(got, want)


def test_callables_see_the_callers_ids(model, batch):
    """Stopping criteria, logits processors, prefix_allowed_tokens_fn and the streamer see the caller's prompt."""
    L = batch["input_ids"].shape[1]
    seen = {"stop": [], "proc": [], "prefix": [], "put": []}

    class Stop(transformers.StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            seen["stop"].append(input_ids.clone())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    class Proc(transformers.LogitsProcessor):
        def __call__(self, input_ids, scores):
            seen["proc"].append(input_ids.clone())
            return scores

    class Streamer(transformers.generation.streamers.BaseStreamer):
        def put(self, value):
            seen["put"].append(value.clone())

        def end(self):
            seen["put"].append(None)

    def prefix(batch_id, sent):
        seen["prefix"].append((batch_id, sent.clone()))
        return list(range(tl.VOCAB))

    with torch.no_grad(), enable(model, num_retain=R):
        out = greedy(model, batch, referring_expressions=EXPRS, stopping_criteria=[Stop()],
                     logits_processor=[Proc()], prefix_allowed_tokens_fn=prefix, streamer=Streamer())
        plain = greedy(model, batch, referring_expressions=EXPRS)
    assert torch.equal(out, plain)
    prompt = batch["input_ids"]
    for ids in seen["stop"] + seen["proc"]:
        assert torch.equal(ids[:, :L], prompt) and torch.equal(ids, out[:, :ids.shape[1]])
    assert len(seen["stop"]) == 4 and len(seen["proc"]) == 4
    assert all(torch.equal(sent[:L], prompt[b]) for b, sent in seen["prefix"])
    assert torch.equal(seen["put"][0], prompt) and seen["put"][-1] is None
    assert torch.equal(torch.cat([p.view(-1, 1) for p in seen["put"][1:-1]], 1), out[:, L:])


def test_cache_from_a_pruned_turn_continues_like_a_recompute(model, batch):
    """Turn 2 with turn 1's cache equals turn 2 prefilled from scratch with the same pixels and expressions."""
    gen = dict(max_new_tokens=4, do_sample=False)
    with torch.no_grad(), enable(model, num_retain=R):
        turn1 = model.generate(**batch, referring_expressions=EXPRS, return_dict_in_generate=True, **gen)
        follow = torch.randint(3, tl.VOCAB - 3, (2, 3), generator=torch.Generator().manual_seed(4))
        ids2 = torch.cat([turn1.sequences, follow], 1)
        mask2 = torch.cat([batch["attention_mask"], torch.ones(2, ids2.shape[1] - batch["input_ids"].shape[1],
                                                                dtype=torch.long)], 1)
        turn2 = dict(input_ids=ids2, attention_mask=mask2, pixel_values=batch["pixel_values"])
        scratch = model.generate(**turn2, referring_expressions=EXPRS, **gen)
        other = model.generate(**turn2, referring_expressions=OTHER, **gen)
        cached = model.generate(**turn2, past_key_values=copy.deepcopy(turn1.past_key_values),
                                referring_expressions=EXPRS, **gen)
        no_pixels = model.generate(input_ids=ids2, attention_mask=mask2,
                                   past_key_values=copy.deepcopy(turn1.past_key_values), **gen)
        with pytest.raises(ValueError, match="referring_expressions"):
            model.generate(**turn2, past_key_values=copy.deepcopy(turn1.past_key_values),
                           referring_expressions=OTHER, **gen)
        with pytest.raises(ValueError, match="pixel_values"):
            model.generate(**dict(turn2, pixel_values=lm.pixels(3, 3, tl.IMAGE, tl.IMAGE, seed=9)),
                           past_key_values=copy.deepcopy(turn1.past_key_values), referring_expressions=EXPRS, **gen)
        wrong = ids2.clone()
        wrong[:, batch["input_ids"].shape[1] - 1] = 7  # another prompt under the same cache
        with pytest.raises(ValueError, match="past_key_values"):
            model.generate(input_ids=wrong, attention_mask=mask2,
                           past_key_values=copy.deepcopy(turn1.past_key_values), **gen)
    assert not torch.equal(scratch, other)  # the selection shows in the tokens
    assert torch.equal(cached, scratch)
    assert torch.equal(no_pixels, scratch)


def test_forward_refuses_a_filled_cache_with_pixels(model, batch):
    with torch.no_grad(), enable(model, num_retain=R):
        out = model(**batch, referring_expressions=EXPRS, use_cache=True)
        with pytest.raises(ValueError, match="past_key_values"):
            model(**batch, referring_expressions=EXPRS, past_key_values=out.past_key_values)


def test_a_cache_of_unknown_origin_is_refused(model, batch):
    with torch.no_grad():
        stock_cache = model(**batch, use_cache=True).past_key_values
        with enable(model, num_retain=R), pytest.raises(ValueError, match="past_key_values"):
            greedy(model, batch, referring_expressions=EXPRS, past_key_values=stock_cache)


def test_assistant_model_refused(model, batch):
    with torch.no_grad(), enable(model, num_retain=R), pytest.raises(ValueError, match="assistant_model"):
        greedy(model, batch, referring_expressions=EXPRS, assistant_model=model)


# --------------------------------------------------------------------------- compile, copies


def test_torch_compile_of_a_patched_model(model, batch):
    with torch.no_grad(), enable(model, num_retain=R):
        eager = model(**batch, referring_expressions=EXPRS).logits
        compiled = torch.compile(model, backend="aot_eager")
        got = compiled(**batch, referring_expressions=EXPRS).logits
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)


def test_deepcopy_is_patched_on_its_own_weights(model, batch):
    with torch.no_grad(), enable(model, num_retain=R) as patch:
        want = model(**batch, referring_expressions=EXPRS).logits
        twin = copy.deepcopy(model)
        assert twin._litelvlm_patch is not patch and twin._litelvlm_patch.model is twin
        assert torch.equal(twin(**batch, referring_expressions=EXPRS).logits, want)
        twin.get_output_embeddings().weight.mul_(2)
        vision_tower(lm.inner(twin).vision_tower).encoder.layers[0].mlp.fc1.weight.mul_(-1)
        changed = twin(**batch, referring_expressions=EXPRS).logits
        assert torch.equal(model(**batch, referring_expressions=EXPRS).logits, want)  # the original is untouched
        twin._litelvlm_patch.disable()
        assert "forward" not in twin.__dict__ and model._litelvlm_patch is patch
    assert not torch.allclose(changed, want)
