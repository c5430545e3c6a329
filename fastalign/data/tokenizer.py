"""A byte-level tokenizer built in code: no download, every UTF-8 text round-trips.

Ids ``0..255`` are the bytes themselves (id == byte value), then three special tokens:
``<pad>`` = 256, ``<bos>`` = 257, ``<eos>`` = 258 (``len(tokenizer) == 259``). No token is
added automatically (no BOS on ``tokenizer(text)``), and text never turns into a special token:
the tokenizer is built with ``split_special_tokens=True`` (saved with it), so
``tokenizer("<eos>")`` is the five bytes and ``decode(tokenizer(text).input_ids) == text`` for
every text. Special tokens come from ids, or from text tokenized with
``split_special_tokens=False``: what ``fastalign.data`` does with its rows (the chat template
writes ``<bos>``/``<eos>`` as text), and what ``apply_chat_template(..., tokenize=True)`` needs
(``tokenizer_kwargs={"split_special_tokens": False}``). Tools that append ``eos_token`` as text
to plain rows (TRL's DPO/SFT trainers) therefore get the five bytes with this tokenizer; real
tokenizers parse special tokens by default.

Chat template (``apply_chat_template``)::

    <bos>user: Hi
    assistant: Hello<eos>
    user: Bye
    assistant: 

Messages are ``role: content``, separated by newlines; an assistant turn ends with ``<eos>``
and nothing after it, so "prompt rendered with ``add_generation_prompt=True``" is a prefix of
"prompt + answer rendered" and the difference is exactly ``answer<eos>``.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD_ID, BOS_ID, EOS_ID = 256, 257, 258
SPECIAL_TOKENS = {"<pad>": PAD_ID, "<bos>": BOS_ID, "<eos>": EOS_ID}
VOCAB_SIZE = 259

CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{{- message['role'] + ': ' + message['content'] -}}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{%- if messages -%}{{- '\\n' -}}{%- endif -%}{{- 'assistant: ' -}}"
    "{%- endif -%}"
)


def _backend() -> Tokenizer:
    # ByteLevel maps every byte to one printable unicode character; a BPE over exactly those
    # 256 characters with no merges is then one token per byte. use_regex=False: no
    # GPT-2 word splitting (it would not change ids, only cost time).
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    if set(vocab) != set(alphabet):  # guards against a tokenizers release changing the map
        raise RuntimeError("tokenizers' ByteLevel alphabet is not the GPT-2 byte map")
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the one ByteLevel uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Build the byte tokenizer (see the module docstring for ids and the chat template).

    Returns:
        A ``PreTrainedTokenizerFast`` (``TokenizersBackend`` in transformers 5) with
        ``pad/bos/eos`` set, ``padding_side="right"``, ``split_special_tokens=True``,
        ``len == 259``. It saves with
        ``save_pretrained`` and loads back with ``AutoTokenizer.from_pretrained(dir)``.
    """
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_backend(),
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        clean_up_tokenization_spaces=False,  # would rewrite " ." to "." on decode
        padding_side="right",
        model_max_length=1 << 20,
        split_special_tokens=True,  # a user's "<eos>" is text; see the module docstring
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer))
    if ids != (PAD_ID, BOS_ID, EOS_ID, VOCAB_SIZE):
        raise RuntimeError(f"byte tokenizer ids changed: pad/bos/eos/len = {ids}")
    return tokenizer
