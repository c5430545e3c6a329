"""Generation (fastalign/rollout/generate.py): what is handed to the engine (left-padded
prompts encoded like training data, decoding options), what comes back (EOS kept, text without
special tokens, sampling log-probs), batching, seeding and modes; then a real tiny model checked
against a hand-written greedy loop."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fastalign.app.recipes import load_model
from fastalign.data import byte_tokenizer
from fastalign.models import PolicyModel
from fastalign.rollout import Rollout, generate

TOKENIZER = byte_tokenizer()
PAD, EOS = TOKENIZER.pad_token_id, TOKENIZER.eos_token_id  # 256, 258
VOCAB = len(TOKENIZER)


class ScriptedLM(nn.Module):
    """Stands in for a transformers causal LM: ``generate`` returns scripted new tokens (one list
    per prompt, looked up by the prompt's last token) and logs its arguments. Sampling draws the
    scores from the global RNG, so seeding is visible."""

    def __init__(self, script: dict[int, list[int]]):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.script = script
        self.calls = []
        self.modes = []

    def generate(self, input_ids, attention_mask, **options):
        self.calls.append(dict(input_ids=input_ids.tolist(), attention_mask=attention_mask.tolist(), **options))
        self.modes.append(self.training)
        new = torch.tensor([self.script[int(row[-1])] for row in input_ids])
        sequences = torch.cat([input_ids, new], dim=1)
        scores = None
        if options["output_scores"]:
            scores = tuple(torch.randn(len(input_ids), VOCAB) for _ in range(new.shape[1]))
        return SimpleNamespace(sequences=sequences, scores=scores)


def _script():
    # "ab" -> "hi" EOS (then padding after the EOS); "xyz" -> "ok!" (no EOS: the limit).
    return {ord("b"): [ord("h"), ord("i"), EOS, PAD], ord("z"): [ord("o"), ord("k"), ord("!"), ord("?")]}


def test_greedy_generation_hands_over_left_padded_prompts_and_cuts_at_eos():
    lm = ScriptedLM(_script())
    out = generate(lm, TOKENIZER, ["ab", "xyz"], max_new_tokens=4)
    assert isinstance(out, Rollout)
    (call,) = lm.calls
    assert call.pop("input_ids") == [[PAD, 97, 98], [120, 121, 122]]
    assert call.pop("attention_mask") == [[0, 1, 1], [1, 1, 1]]
    assert call == {"do_sample": False, "max_new_tokens": 4, "pad_token_id": PAD, "eos_token_id": EOS,
                    "return_dict_in_generate": True, "output_scores": False}
    assert out.prompts == ["ab", "xyz"]
    assert out.prompt_ids == [[97, 98], [120, 121, 122]]
    assert out.completion_ids == [[104, 105, EOS], [111, 107, 33, 63]]  # EOS kept, nothing after it
    assert out.completions == ["hi", "ok!?"]  # special tokens dropped from the text
    assert out.logprobs == [[], []]  # greedy: no sampling distribution


def test_sampling_options_and_the_log_probs_of_the_picked_tokens():
    lm = ScriptedLM(_script())
    torch.manual_seed(123)
    expected_scores = [torch.randn(2, VOCAB) for _ in range(4)]
    out = generate(lm, TOKENIZER, ["ab", "xyz"], max_new_tokens=4, temperature=0.7, top_p=0.9, seed=123)
    (call,) = lm.calls
    assert {key: call[key] for key in ("do_sample", "temperature", "top_p", "top_k", "remove_invalid_values",
                                       "output_scores")} == {"do_sample": True, "temperature": 0.7, "top_p": 0.9,
                                                             "top_k": 0, "remove_invalid_values": True,
                                                             "output_scores": True}
    logp = torch.stack(expected_scores, 1).log_softmax(-1)  # [prompt, step, vocab]
    assert out.logprobs[0] == pytest.approx([logp[0, 0, 104].item(), logp[0, 1, 105].item(), logp[0, 2, EOS].item()])
    assert out.logprobs[1] == pytest.approx([logp[1, i, t].item() for i, t in enumerate([111, 107, 33, 63])])
    assert [len(x) for x in out.logprobs] == [len(x) for x in out.completion_ids]


def test_prompts_are_generated_in_batches_in_order():
    script = {ord(c): [ord(c.upper()), EOS] for c in "abcde"}
    lm = ScriptedLM(script)
    out = generate(lm, TOKENIZER, ["a", "bb", "c", "ddd", "e"], batch_size=2, max_new_tokens=2)
    assert [len(call["input_ids"]) for call in lm.calls] == [2, 2, 1]
    assert lm.calls[1]["input_ids"] == [[PAD, PAD, 99], [100, 100, 100]]  # padded to the batch's longest
    assert out.completions == ["A", "B", "C", "D", "E"]
    assert out.prompts == ["a", "bb", "c", "ddd", "e"]


def test_a_seed_repeats_the_samples_and_leaves_the_global_rng_alone():
    lm = ScriptedLM(_script())
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    first = generate(lm, TOKENIZER, ["ab", "xyz"], temperature=1.0, seed=7, max_new_tokens=4)
    assert torch.equal(torch.random.get_rng_state(), state), "the caller's RNG stream is restored"
    second = generate(lm, TOKENIZER, ["ab", "xyz"], temperature=1.0, seed=7, max_new_tokens=4)
    other = generate(lm, TOKENIZER, ["ab", "xyz"], temperature=1.0, seed=8, max_new_tokens=4)
    assert first.logprobs == second.logprobs and first.logprobs != other.logprobs
    unseeded = generate(lm, TOKENIZER, ["ab", "xyz"], temperature=1.0, max_new_tokens=4)
    assert not torch.equal(torch.random.get_rng_state(), state), "without a seed the global RNG is used"
    assert unseeded.logprobs != first.logprobs


@pytest.mark.parametrize("training", [True, False])
def test_runs_in_eval_mode_and_restores_the_mode(training):
    lm = ScriptedLM(_script()).train(training)
    generate(lm, TOKENIZER, ["ab"], max_new_tokens=4)
    assert lm.modes == [False] and lm.training is training


@pytest.mark.parametrize("prompts, options, message", [
    ("ab", {}, "prompts must be a list of strings"),
    (["ab", 3], {}, "prompts must be a list of strings"),
    (["ab"], {"max_new_tokens": 0}, "max_new_tokens and batch_size must be >= 1"),
    (["ab"], {"batch_size": 0}, "max_new_tokens and batch_size must be >= 1"),
    (["ab"], {"temperature": -0.1}, r"need temperature >= 0 and 0 < top_p <= 1, got -0.1, 1.0"),
    (["ab"], {"top_p": 0.0}, r"need temperature >= 0 and 0 < top_p <= 1, got 0.0, 0.0"),
    (["ab"], {"top_p": 1.5}, r"need temperature >= 0 and 0 < top_p <= 1, got 0.0, 1.5"),
])
def test_bad_arguments_are_refused(prompts, options, message):
    lm = ScriptedLM(_script())
    with pytest.raises(ValueError, match=message):
        generate(lm, TOKENIZER, prompts, **options)
    assert lm.calls == []


def test_a_tokenizer_without_a_pad_token_is_refused():
    with pytest.raises(ValueError, match="tokenizer needs a pad token for batched generation"):
        generate(ScriptedLM(_script()), SimpleNamespace(pad_token_id=None), ["ab"])


@torch.no_grad()
def _greedy_by_hand(model, prompt_ids: list[int], steps: int) -> list[int]:
    """Argmax of one unpadded forward per step, stopping after EOS."""
    ids = list(prompt_ids)
    for _ in range(steps):
        token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        ids.append(token)
        if token == EOS:
            break
    return ids[len(prompt_ids):]


def test_a_real_model_generates_greedily_the_same_in_any_batch():
    model, tokenizer = load_model("tiny", seed=0)
    prompts = ["upper: abc\n", "reverse: hello\n", "x"]
    batched = generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=3)
    single = generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=1)
    assert batched.completion_ids == single.completion_ids
    for prompt_ids, completion_ids in zip(batched.prompt_ids, batched.completion_ids):
        assert completion_ids == _greedy_by_hand(model, prompt_ids, 4)
    assert batched.completions == [tokenizer.decode(ids, skip_special_tokens=True) for ids in batched.completion_ids]
    # A fastalign module generates through the transformers model it wraps.
    assert generate(PolicyModel(model), tokenizer, prompts, max_new_tokens=4).completion_ids == batched.completion_ids


def test_a_real_model_samples_reproducibly_with_its_own_log_probs():
    model, tokenizer = load_model("tiny", seed=0)
    prompts = ["upper: abc\n", "reverse: hello\n"]
    first = generate(model, tokenizer, prompts, max_new_tokens=4, temperature=1.0, seed=3)
    again = generate(model, tokenizer, prompts, max_new_tokens=4, temperature=1.0, seed=3)
    assert first.completion_ids == again.completion_ids and first.logprobs == again.logprobs
    for prompt_ids, ids, logprobs in zip(first.prompt_ids, first.completion_ids, first.logprobs):
        assert 1 <= len(ids) <= 4 and len(logprobs) == len(ids)
        # At temperature 1, top_p 1: log-softmax of the model's own logits at each sampled token.
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt_ids + ids])).logits[0].float()
        steps = torch.arange(len(prompt_ids) - 1, len(prompt_ids) + len(ids) - 1)
        expected = logits[steps].log_softmax(-1)[torch.arange(len(ids)), torch.tensor(ids)]
        assert logprobs == pytest.approx(expected.tolist(), abs=1e-4)
