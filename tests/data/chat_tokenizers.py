"""Realistic chat tokenizers built in code (no hub): one byte-level BPE trained on a small
English corpus, wrapped as ``PreTrainedTokenizerFast`` with the special tokens and chat template
of a model family.

Flavors:
    ``chatml``   Qwen-style ChatML, EOS ``<|im_end|>``, no BOS; a turn ends ``<|im_end|>\\n``.
    ``llama3``   Llama-3-style headers, ``<|begin_of_text|>`` (written by the template and added
                 by the tokenizer itself), turns end ``<|eot_id|>``; EOS is ``<|end_of_text|>``
                 as in the first Llama-3 release, so the template's end token is not EOS.
    ``mistral``  ``[INST] ... [/INST]``: no generation-prompt support; answers end with EOS ``</s>``;
                 the tokenizer adds BOS ``<s>``, which the template writes too.
    ``plain``    ``role: content`` lines: the template never ends a turn (EOS ``<|endoftext|>``).

Each template marks assistant output with ``{% generation %}`` (as TRL's training templates do)
so TRL's assistant-only SFT masks can be compared.
"""

from __future__ import annotations

import functools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

FLAVORS = ("chatml", "llama3", "mistral", "plain")

# Short English with quoted questions and dialogue, so the BPE learns merges such as `?"` and
# ` the` that cross a prompt/answer boundary.
_SENTENCES = (
    '"Where is the station?" asked the old man. "Down the road, past the bakery," she said.',
    '"What did the sign say?" he asked. "Closed on Sundays," I told him.',
    '"Is it raining?" "No, the sun is out and the sky is clear."',
    '"Can you help me?" the child asked her mother, and she smiled.',
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please write a short answer. Keep it clear, kind and to the point.",
    "What is the capital of France? The capital of France is Paris.",
    "How many legs does a spider have? A spider has eight legs.",
    "Explain why the sky is blue in one sentence.",
    "The light from the sun is scattered by the air, and blue light is scattered the most.",
    "You are a helpful assistant. Answer the question of the user.",
    "Thank you for the help! You are welcome, have a nice day.",
    "I think the answer is yes, but I am not sure about the details.",
    "Water boils at one hundred degrees at sea level.",
    "Summarize the story: a girl finds a lost dog and brings it home.",
    '"Why not?" "Because the shop is closed today," he said with a sigh.',
    "Tell me a joke about a cat. The cat sat on the mat and said nothing at all.",
    "Translate to French: good morning. Bonjour.",
)
CORPUS = [sentence for _ in range(3) for sentence in _SENTENCES]

SYSTEM = "You are a helpful assistant."
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n" + SYSTEM + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>\\n' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
LLAMA3_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] | trim + '<|eot_id|>' -}}{%- endgeneration -%}"
    "{%- else -%}{{- message['content'] | trim + '<|eot_id|>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)
MISTRAL_TEMPLATE = (  # ignores add_generation_prompt, as Mistral's first templates did
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- '[INST] ' + message['content'] + ' [/INST]' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- ' ' + message['content'] + eos_token -}}{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
PLAIN_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- 'assistant:' -}}{%- generation -%}{{- ' ' + message['content'] + '\\n' -}}{%- endgeneration -%}"
    "{%- else -%}{{- message['role'] + ': ' + message['content'] + '\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'assistant:' -}}{%- endif -%}"
)

# specials (first = pad), bos, eos, template, whether the tokenizer adds BOS itself
_SPECS = {
    "chatml": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", CHATML_TEMPLATE, False),
    "llama3": (["<|finetune_right_pad_id|>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"], "<|begin_of_text|>", "<|end_of_text|>", LLAMA3_TEMPLATE, True),
    "mistral": (["<unk>", "<s>", "</s>"], "<s>", "</s>", MISTRAL_TEMPLATE, True),
    "plain": (["<|endoftext|>"], None, "<|endoftext|>", PLAIN_TEMPLATE, False),
}
# The control token that ends an assistant turn in each flavor's template (None: nothing does).
TURN_END = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>", "plain": None}


@functools.cache
def _trained_bpe() -> str:
    """The BPE trained once per process, serialized (each flavor gets its own copy)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2 word split
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer.to_str()


def chat_tokenizer(flavor: str) -> PreTrainedTokenizerFast:
    """A fresh ``PreTrainedTokenizerFast`` of ``flavor`` (one of ``FLAVORS``)."""
    specials, bos, eos, template, adds_bos = _SPECS[flavor]
    backend = Tokenizer.from_str(_trained_bpe())
    backend.add_special_tokens(specials)
    if adds_bos:  # Llama / Mistral tokenizers put BOS first on their own
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=specials[0],
                                        clean_up_tokenization_spaces=False)
    tokenizer.chat_template = template
    return tokenizer
