"""An embedded, verifiable preference task: no download, deterministic from a seed.

A prompt asks for one string operation on a random lowercase word; the answer is checkable::

    prompt "upper: kqzvw\\n"    -> "KQZVW"      (uppercase the word)
    prompt "reverse: kqzvw\\n"  -> "wvzqk"      (reverse the word)

``task="mix"`` draws the operation per prompt. Words have ``min_length..max_length`` letters
(prompts <= 21 bytes, answers <= 11). The rejected answer is a near miss: one letter changed,
two neighbours swapped, one letter left lowercase (upper), or the word left unreversed
(reverse) — never the correct answer. A 2-layer, 128-wide byte-level decoder learns it from a
few thousand SFT examples and answers unseen words, so SFT -> DPO -> GRPO runs can measure
held-out exact-match accuracy with ``verify``.

Splits: prompts come from one seeded stream; ``test`` takes the first ``num_test`` and ``train``
the next ``num_train``, so both splits are disjoint, and the same seed gives the same test
prompts whatever ``num_train`` is (and the same prompts for the SFT and preference versions).
"""

from __future__ import annotations

import random
import re
import string

from datasets import Dataset, DatasetDict

TASKS = ("upper", "reverse", "mix")
OPERATIONS = ("upper", "reverse")
MAX_WORD_LENGTH = 11
_PROMPT = re.compile(r"(upper|reverse): ([a-z]+)\n")


def solve(operation: str, word: str) -> str:
    """The correct answer of ``operation`` on ``word``."""
    if operation == "upper":
        return word.upper()
    if operation == "reverse":
        return word[::-1]
    raise ValueError(f"operation must be one of {OPERATIONS}, got {operation!r}")


def _near_miss(operation: str, word: str, rng: random.Random) -> str:
    """A plausible wrong answer: the kinds of mistake a half-trained model makes."""
    correct = solve(operation, word)
    letters = string.ascii_uppercase if operation == "upper" else string.ascii_lowercase
    candidates = []
    i = rng.randrange(len(correct))
    changed = rng.choice(letters.replace(correct[i], ""))
    candidates.append(correct[:i] + changed + correct[i + 1:])
    j = rng.randrange(len(correct) - 1) if len(correct) > 1 else 0
    candidates.append(correct[:j] + correct[j + 1: j + 2] + correct[j] + correct[j + 2:])
    if operation == "upper":
        candidates.append(correct[:i] + correct[i].lower() + correct[i + 1:])
    else:
        candidates.append(word)
    wrong = [c for c in candidates if c != correct]  # a swap of equal letters / a palindrome
    return rng.choice(wrong)


def _prompts(count: int, task: str, min_length: int, max_length: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    seen: set[tuple[str, str]] = set()
    out = []
    while len(out) < count:
        operation = rng.choice(OPERATIONS) if task == "mix" else task
        length = rng.randint(min_length, max_length)
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(length))
        if (operation, word) not in seen:
            seen.add((operation, word))
            out.append((operation, word))
    return out


def _check(num_train: int, num_test: int, seed: int, task: str, min_length: int, max_length: int) -> None:
    for name, value in (("num_train", num_train), ("num_test", num_test), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    for name, value in (("min_length", min_length), ("max_length", max_length)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORD_LENGTH:
            raise ValueError(f"{name} must be an int in [1, {MAX_WORD_LENGTH}], got {value!r}")
    if min_length > max_length:
        raise ValueError(f"min_length ({min_length}) must be <= max_length ({max_length})")
    words = sum(26**n for n in range(min_length, max_length + 1))
    available = words * (2 if task == "mix" else 1)
    if num_train + num_test > available // 2:  # keeps rejection sampling fast
        raise ValueError(f"num_train + num_test must be <= {available // 2} for these word lengths")


def _make(num_train: int, num_test: int, seed: int, task: str, min_length: int, max_length: int,
          preference: bool) -> DatasetDict:
    _check(num_train, num_test, seed, task, min_length, max_length)
    prompts = _prompts(num_test + num_train, task, min_length, max_length, seed)
    # A separate stream for the near misses: changing them never moves the prompts.
    rng = random.Random(f"near-miss-{seed}")
    splits = {}
    for name, part in (("train", prompts[num_test:]), ("test", prompts[:num_test])):
        columns: dict[str, list[str]] = {"prompt": [f"{op}: {word}\n" for op, word in part]}
        answers = [solve(op, word) for op, word in part]
        if preference:
            columns["chosen"] = answers
            columns["rejected"] = [_near_miss(op, word, rng) for op, word in part]
        else:
            columns["completion"] = answers
        splits[name] = Dataset.from_dict(columns)
    return DatasetDict(splits)


def make_preference_task(
    num_train: int, num_test: int, *, seed: int = 0, task: str = "mix", min_length: int = 3, max_length: int = 6
) -> DatasetDict:
    """``train``/``test`` splits with string columns ``prompt``, ``chosen`` (correct),
    ``rejected`` (a near miss). ``task``: ``"upper"``, ``"reverse"`` or ``"mix"``."""
    return _make(num_train, num_test, seed, task, min_length, max_length, preference=True)


def make_sft_task(
    num_train: int, num_test: int, *, seed: int = 0, task: str = "mix", min_length: int = 3, max_length: int = 6
) -> DatasetDict:
    """``train``/``test`` splits with string columns ``prompt``, ``completion`` (correct).
    Same prompts as ``make_preference_task`` with the same arguments."""
    return _make(num_train, num_test, seed, task, min_length, max_length, preference=False)


def _answer_and_expected(prompt: str, completion: str, eos_token: str | None) -> tuple[str, str]:
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise ValueError("prompt and completion must be strings")
    match = _PROMPT.fullmatch(prompt)
    if match is None:
        raise ValueError(f"prompt is not a synthetic-task prompt: {prompt[:40]!r}")
    if eos_token:
        completion = completion.split(eos_token, 1)[0]
    return completion.strip(), solve(match.group(1), match.group(2))


def verify_score(prompt: str, completion: str, *, eos_token: str | None = "<eos>") -> float:
    """Graded verifier in ``[0, 1]``: the share of answer positions holding the right letter,
    divided by ``max(len(answer), len(expected))`` (so extra or missing letters cost). 1.0
    exactly when ``verify`` holds; a dense reward for RL on this task."""
    answer, expected = _answer_and_expected(prompt, completion, eos_token)
    matches = sum(a == b for a, b in zip(answer, expected))
    return matches / max(len(answer), len(expected))


def verify(prompt: str, completion: str, *, eos_token: str | None = "<eos>") -> bool:
    """Whether ``completion`` answers ``prompt`` exactly.

    The completion is cut at the first ``eos_token`` (decoded text may carry it and whatever
    was generated after it), then surrounding whitespace is stripped; the rest must equal the
    answer. Raises ``ValueError`` if ``prompt`` is not a prompt of this task.
    """
    answer, expected = _answer_and_expected(prompt, completion, eos_token)
    return answer == expected
