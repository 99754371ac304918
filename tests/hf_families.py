"""Tiny, offline Hugging Face model directories, one per model family.

`make_hf_dir(root, family)` writes what a user's downloaded model looks like — exactly
what `save_pretrained` writes for a model, its tokenizer and its generation config — but
with a ~500-token tokenizer trained here and a 2-layer, 64-wide model with random
weights.  Nothing is downloaded; everything is deterministic for a given `seed`.

Families and what each one exercises:

* ``llama3``  — LlamaConfig with Llama-3.1 "llama3" RoPE scaling, byte-level BPE with a
  ``<|begin_of_text|>``-prepending post-processor, Llama-3 header/eot chat format.
* ``qwen2``   — Qwen2Config (q/k/v biases), byte-level BPE without BOS, ChatML with the
  default system message.
* ``qwen3``   — Qwen3Config (QK-norm, explicit head_dim), ChatML with ``<think>`` blocks.
* ``mistral`` — MistralConfig, SentencePiece-style BPE with byte fallback (``<0xNN>``),
  Metaspace pre-tokenizer, ``[INST] … [/INST]`` chat format.

All chat templates below are written for these tests; they render each family's
documented format (see `RENDERED` in tests/test_hf_families_fixture.py), tools included:
Qwen2.5/Qwen3's Hermes `<tools>` and `<tool_call>`, Llama 3.1's JSON functions in the first
user turn and `{"name", "parameters"}` calls with ipython results, Mistral's
`[AVAILABLE_TOOLS]`, `[TOOL_CALLS]` and `[TOOL_RESULTS]` (tests/infer/test_tools.py checks
jielong renders them as transformers does).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

FAMILIES = ("llama3", "qwen2", "qwen3", "mistral")

HIDDEN = 64
INTERMEDIATE = 128
LAYERS = 2
HEADS = 4
KV_HEADS = 2
MAX_POS = 512
VOCAB_TARGET = 460  # byte-level BPE: 256 byte symbols + learnt merges (before specials)
SP_VOCAB_TARGET = 330  # SentencePiece-style: characters + merges (before specials, <0xNN>)

# --------------------------------------------------------------------------- corpus

_CORPUS_EN = [
    "The cat sat on the mat near the river.",
    "Mei lives in Maple town and keeps a goose named Pickle.",
    "A helpful assistant answers questions clearly and politely.",
    "Numbers like 12, 345 and 6789 are easy to add together.",
    "The weather is nice today, so we walk along the river.",
    "Please write a short poem about the moon and the sea.",
    "What is the capital of France? The capital of France is Paris.",
    "Tea is served at three o'clock in the little book shop.",
    "Can you explain how a rainbow forms after the rain?",
    "Sunlight bends inside raindrops and splits into many colours.",
    "I don't know, but I'll find out and tell you tomorrow.",
    "The quick brown fox jumps over the lazy dog.",
    "Let's think step by step before we answer the question.",
    "Hello! How are you today? I am fine, thank you.",
    "Dragons in old stories guard gold and speak in riddles.",
    "She reads a book, he writes a letter, and they both smile.",
]

_CORPUS_HANT = [
    "今天天氣很好，我們去河邊散步。",
    "阿明住在龍鄉，他養了一隻貓。",
    "書店裡有很多書，老闆很親切。",
    "請幫我寫一首關於月亮的短詩。",
    "法國的首都是哪裡？法國的首都是巴黎。",
    "彩虹是陽光在雨滴裡折射形成的。",
    "你好！你今天過得怎麼樣？我很好，謝謝。",
    "我們一步一步地思考這個問題。",
    "臺灣的夜市有很多好吃的小吃。",
    "這隻龍守護著山洞裡的黃金。",
]

_CORPUS_HANS = [
    "今天天气很好，我们去河边散步。",
    "阿明住在龙乡，他养了一只猫。",
    "书店里有很多书，老板很亲切。",
    "请帮我写一首关于月亮的短诗。",
    "法国的首都是哪里？法国的首都是巴黎。",
    "彩虹是阳光在雨滴里折射形成的。",
    "你好！你今天过得怎么样？我很好，谢谢。",
    "我们一步一步地思考这个问题。",
    "上海的早餐有包子、豆浆和油条。",
    "这条龙守护着山洞里的黄金。",
]

CORPUS: tuple[str, ...] = tuple(_CORPUS_EN + _CORPUS_HANT + _CORPUS_HANS)

# Conversations every template must render.  All of them alternate user/assistant after
# an optional leading system message (Mistral's template insists on that).
SAMPLE_CHATS: list[list[dict]] = [
    # 0: English, no system message, single turn, ends with the user.
    [{"role": "user", "content": "What is the capital of France?"}],
    # 1: English, system message, multi-turn, ends with the assistant.
    [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": "Hello! How are you today?"},
        {"role": "assistant", "content": "I am fine, thank you."},
        {"role": "user", "content": "Can you explain how a rainbow forms?"},
        {"role": "assistant", "content": "Sunlight bends inside raindrops and splits into colours."},
    ],
    # 2: Traditional Chinese, multi-turn, ends with the user.
    [
        {"role": "user", "content": "你好！請幫我寫一首關於月亮的短詩。"},
        {"role": "assistant", "content": "月亮照著河邊，我們一起散步。"},
        {"role": "user", "content": "謝謝！再寫一首關於龍的。"},
    ],
    # 3: Simplified Chinese with a system message and reasoning_content on the final
    #    assistant turn (qwen3 renders it, the other templates ignore it).
    [
        {"role": "system", "content": "你是一个有帮助的助手。"},
        {"role": "user", "content": "法国的首都是哪里？"},
        {
            "role": "assistant",
            "reasoning_content": "用户问法国的首都。我们一步一步地思考：首都是巴黎。",
            "content": "法国的首都是巴黎。",
        },
    ],
    # 4: characters the tokenizer never saw (rare CJK, emoji, accented Latin) so that
    #    byte fallback / byte-level paths are hit; an earlier assistant turn carries a
    #    <think> prefix in its content, which qwen3 strips from turns before the last
    #    user message.
    [
        {"role": "user", "content": "饕餮是什麼？🐉"},
        {"role": "assistant", "content": "<think>\nAn old riddle.\n</think>\n\n饕餮是古代傳說中的怪獸。🍜"},
        {"role": "user", "content": "Merci beaucoup — très bien! 👍"},
    ],
]

# --------------------------------------------------------------------------- per-family spec

# Regexes for the byte-level families' Split pre-tokenizers: Llama 3 groups digits in
# runs of up to three, Qwen2 splits every digit.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# tokens: special tokens in id order; roles: which of them the tokenizer calls bos/eos/pad;
# gen_eos: the generation config's eos (a list where the family stops on several tokens).
_SPECS: dict[str, dict] = {
    "llama3": {
        "special": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                    "<|end_header_id|>", "<|eot_id|>"],
        "bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "pad": "<|end_of_text|>",
        "gen_eos": ["<|end_of_text|>", "<|eot_id|>"], "config_bos": "<|begin_of_text|>",
    },
    "qwen2": {
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>",
        # Qwen's config/generation config name <|endoftext|> as bos although the
        # tokenizer has no bos token and never prepends one.
        "gen_eos": ["<|im_end|>", "<|endoftext|>"], "config_bos": "<|endoftext|>",
    },
    "qwen3": {
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "extra": ["<think>", "</think>"],
        "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>",
        "gen_eos": ["<|im_end|>", "<|endoftext|>"], "config_bos": "<|endoftext|>",
    },
    "mistral": {
        "special": ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
        "bos": "<s>", "eos": "</s>", "pad": "<unk>", "unk": "<unk>",
        "gen_eos": "</s>", "config_bos": "<s>",
    },
}

# --------------------------------------------------------------------------- chat templates


# Hermes tools (Qwen2.5 / Qwen3), in three pieces the two Qwen templates share: the tool
# list appended to the system turn, an assistant message's calls as `calls.text`, and tool
# results (consecutive tool messages gathered into one user turn).
# The two long sentences (tests/serve/test_v1_tools.py drops them to fit a 512-token context).
HERMES_INTRO = ("You may call one or more functions to assist with the user query.\\n\\n"
                "You are provided with function signatures within <tools></tools> XML tags:\\n")
HERMES_FORMAT = ("For each function call, return a json object with function name and arguments "
                 "within <tool_call></tool_call> XML tags:\\n")
_HERMES_TOOLS = (
    "{%- if tools %}"
    "{{- '\\n\\n# Tools\\n\\n" + HERMES_INTRO + "<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\n" + HERMES_FORMAT + "<tool_call>\\n"
    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n</tool_call>' }}"
    "{%- endif %}"
)
_HERMES_CALLS = (
    "{{%- set calls = namespace(text='') %}}"
    "{{%- for tc in message['tool_calls'] if message['tool_calls'] is defined %}}"
    "{{%- set calls.text = calls.text + ('\\n' if {content} or not loop.first else '')"
    " + '<tool_call>\\n{{\"name\": \"' + tc['function']['name'] + '\", \"arguments\": '"
    " + (tc['function']['arguments'] | tojson) + '}}\\n</tool_call>' %}}"
    "{{%- endfor %}}"
)
_HERMES_RESULTS = (
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
)


def _gen(body: str, generation: bool) -> str:
    """`{{ body }}`, wrapped in {% generation %} tags when asked."""
    if generation:
        return "{% generation %}{{- " + body + " }}{% endgeneration %}"
    return "{{- " + body + " }}"


def chat_template(family: str, generation: bool = False) -> str:
    """The family's chat template; with `generation`, each assistant reply (content plus
    its end-of-turn token) is wrapped in {% generation %} … {% endgeneration %}."""
    if family == "llama3":
        # Llama 3.1's JSON tool calling: the functions go into the first user turn, a call is
        # {"name": …, "parameters": …} (several joined by "; "), results come back in an
        # ipython turn.
        return (
            "{{- bos_token }}\n"
            "{%- set ns = namespace(first_user=true) %}\n"
            "{%- for message in messages %}\n"
            "{%- set role = 'ipython' if message['role'] == 'tool' else message['role'] %}\n"
            "{{- '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' }}\n"
            "{%- if message['role'] == 'assistant' %}"
            "{%- set calls = namespace(text='') %}"
            "{%- for tc in message['tool_calls'] if message['tool_calls'] is defined %}"
            "{%- set calls.text = calls.text + ('; ' if not loop.first else '')"
            " + '{\"name\": \"' + tc['function']['name'] + '\", \"parameters\": '"
            " + (tc['function']['arguments'] | tojson) + '}' %}"
            "{%- endfor %}"
            + _gen("(message['content'] | trim) + calls.text + '<|eot_id|>'", generation)
            + "{%- elif message['role'] == 'user' and tools and ns.first_user %}"
            "{%- set ns.first_user = false %}"
            "{{- 'You can call these functions. To call one, answer with only a JSON object "
            "{\"name\": function name, \"parameters\": an object of its arguments}.\\n\\n' }}"
            "{%- for tool in tools %}{{- (tool | tojson(indent=4)) + '\\n\\n' }}{%- endfor %}"
            "{{- message['content'] | trim + '<|eot_id|>' }}"
            "{%- else %}"
            "{{- message['content'] | trim + '<|eot_id|>' }}"
            "{%- endif %}\n"
            "{%- endfor %}\n"
            "{%- if add_generation_prompt %}"
            "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
            "{%- endif %}\n"
        )
    if family == "qwen2":
        # Qwen2.5's Hermes tools: the signatures in the system turn inside <tools></tools>,
        # each call as <tool_call>{"name", "arguments"}</tool_call>, results in a user turn
        # as <tool_response> blocks.
        return (
            "{%- if messages[0]['role'] == 'system' %}"
            "{%- set system = messages[0]['content'] %}"
            "{%- else %}"
            "{%- set system = 'You are a helpful assistant.' %}"
            "{%- endif %}\n"
            "{{- '<|im_start|>system\\n' + system }}"
            + _HERMES_TOOLS +
            "{{- '<|im_end|>\\n' }}\n"
            "{%- for message in messages %}\n"
            "{%- if message['role'] == 'system' and loop.first %}\n"
            "{%- elif message['role'] == 'assistant' %}"
            + _HERMES_CALLS.format(content="message['content']") +
            "{{- '<|im_start|>assistant\\n' }}"
            + _gen("message['content'] + calls.text + '<|im_end|>'", generation)
            + "{{- '\\n' }}"
            + _HERMES_RESULTS +
            "{%- else %}"
            "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
            "{%- endif %}\n"
            "{%- endfor %}\n"
            "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n"
        )
    if family == "qwen3":
        return (
            "{%- if tools %}"
            "{{- '<|im_start|>system\\n' }}"
            "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
            "{%- set system = '' %}"
            + _HERMES_TOOLS.replace("\\n\\n# Tools", "# Tools") +
            "{{- '<|im_end|>\\n' }}"
            "{%- elif messages[0]['role'] == 'system' %}"
            "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
            "{%- endif %}\n"
            "{%- set ns = namespace(last_user=-1) %}\n"
            "{%- for message in messages %}"
            "{%- if message['role'] == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}"
            "{%- endfor %}\n"
            "{%- for message in messages %}\n"
            "{%- if message['role'] == 'system' and loop.first %}\n"
            "{%- elif message['role'] == 'assistant' %}\n"
            "{%- set content = message['content'] if message['content'] is string else '' %}\n"
            "{%- set reasoning = '' %}\n"
            "{%- if message['reasoning_content'] is string %}"
            "{%- set reasoning = message['reasoning_content'] %}"
            "{%- elif '</think>' in content %}"
            "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1] %}"
            "{%- set content = content.split('</think>')[-1] %}"
            "{%- endif %}\n"
            "{%- set reasoning = reasoning.strip('\\n') %}\n"
            "{%- set content = content.lstrip('\\n') %}\n"
            + _HERMES_CALLS.format(content="content") +
            "{%- set content = content + calls.text %}\n"
            "{{- '<|im_start|>assistant\\n' }}"
            "{%- if loop.index0 > ns.last_user and (loop.last or reasoning) %}"
            + _gen("'<think>\\n' + reasoning + '\\n</think>\\n\\n' + content + '<|im_end|>'",
                   generation)
            + "{%- else %}"
            + _gen("content + '<|im_end|>'", generation)
            + "{%- endif %}"
            "{{- '\\n' }}\n"
            + _HERMES_RESULTS +
            "{%- else %}"
            "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
            "{%- endif %}\n"
            "{%- endfor %}\n"
            "{%- if add_generation_prompt %}"
            "{{- '<|im_start|>assistant\\n' }}"
            "{%- if enable_thinking is defined and enable_thinking is false %}"
            "{{- '<think>\\n\\n</think>\\n\\n' }}"
            "{%- endif %}"
            "{%- endif %}\n"
        )
    if family == "mistral":
        # Mistral's v3 tools: [AVAILABLE_TOOLS] before the last user turn, calls as
        # [TOOL_CALLS] [{"name", "arguments", "id"}] with 9-character ids, results as
        # [TOOL_RESULTS] {"content", "call_id"} [/TOOL_RESULTS]; tool turns and calls are left
        # out of the user/assistant alternation check.
        return (
            "{%- if messages[0]['role'] == 'system' %}"
            "{%- set system_message = messages[0]['content'] %}"
            "{%- set loop_messages = messages[1:] %}"
            "{%- else %}"
            "{%- set loop_messages = messages %}"
            "{%- endif %}\n"
            "{%- set ns = namespace(last_user=-1, turn=0) %}\n"
            "{%- for message in loop_messages %}"
            "{%- if message['role'] == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}"
            "{%- endfor %}\n"
            "{{- bos_token }}\n"
            "{%- for message in loop_messages %}\n"
            "{%- if message['role'] == 'user' or (message['role'] == 'assistant'"
            " and message['tool_calls'] is not defined) %}"
            "{%- if (message['role'] == 'user') != (ns.turn % 2 == 0) %}"
            "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
            "{%- endif %}"
            "{%- set ns.turn = ns.turn + 1 %}"
            "{%- endif %}\n"
            "{%- if message['role'] == 'user' %}"
            "{%- if tools and loop.index0 == ns.last_user %}"
            "{{- '[AVAILABLE_TOOLS] ' + (tools | tojson) + '[/AVAILABLE_TOOLS]' }}"
            "{%- endif %}"
            "{%- if loop.index0 == ns.last_user and system_message is defined %}"
            "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
            "{%- else %}"
            "{{- '[INST] ' + message['content'] + '[/INST]' }}"
            "{%- endif %}"
            "{%- elif message['role'] == 'assistant' and message['tool_calls'] is defined %}"
            "{%- set calls = namespace(text='') %}"
            "{%- for tc in message['tool_calls'] %}"
            "{%- if tc['id'] is not defined or tc['id'] | length != 9 %}"
            "{{- raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}"
            "{%- endif %}"
            "{%- set calls.text = calls.text + (', ' if not loop.first else '')"
            " + '{\"name\": \"' + tc['function']['name'] + '\", \"arguments\": '"
            " + (tc['function']['arguments'] | tojson) + ', \"id\": \"' + tc['id'] + '\"}' %}"
            "{%- endfor %}"
            + _gen("'[TOOL_CALLS] [' + calls.text + ']' + eos_token", generation)
            + "{%- elif message['role'] == 'assistant' %}"
            "{{- ' ' }}"
            + _gen("message['content'] + eos_token", generation)
            + "{%- elif message['role'] == 'tool' %}"
            "{{- '[TOOL_RESULTS] {\"content\": ' + (message['content'] | tojson)"
            " + ', \"call_id\": \"' + message['tool_call_id'] + '\"}[/TOOL_RESULTS]' }}"
            "{%- else %}"
            "{{- raise_exception('Only user, assistant and tool roles are supported, "
            "after an optional first system message!') }}"
            "{%- endif %}\n"
            "{%- endfor %}\n"
        )
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


# --------------------------------------------------------------------------- tokenizers


def _byte_level_tokenizer(split_regex: str, nfc: bool, special: list[str], bos: str | None):
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE(byte_fallback=False))
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    tok.train_from_iterator(list(CORPUS), trainer=trainer)
    # Special tokens come after the learnt vocabulary, as in Llama 3 and Qwen.
    tok.add_special_tokens(special)
    byte_level = processors.ByteLevel(trim_offsets=False)
    if bos is None:
        tok.post_processor = byte_level
    else:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.Sequence([
            byte_level,
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
                special_tokens=[(bos, bos_id)],
            ),
        ])
    return tok


def _sentencepiece_bpe_tokenizer(special: list[str], bos: str, unk: str):
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    # Learn merges over the corpus first, word by word (so that, as in SentencePiece, no
    # piece spans a "▁") ...
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                     split=True)
    learner.train_from_iterator(
        list(CORPUS),
        trainer=trainers.BpeTrainer(vocab_size=SP_VOCAB_TARGET, min_frequency=2,
                                    show_progress=False, special_tokens=[]),
    )
    learnt = json.loads(learner.to_str())["model"]
    # ... then lay the vocabulary out the way a SentencePiece conversion does: the
    # special tokens, the 256 <0xNN> byte tokens, then the learnt pieces.
    vocab: dict[str, int] = {}
    for t in [*special, *(f"<0x{b:02X}>" for b in range(256))]:
        vocab[t] = len(vocab)
    for piece, _ in sorted(learnt["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in learnt["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk,
                               byte_fallback=True, fuse_unk=True))
    # ... and, like converted SentencePiece tokenizers, apply them to the whole text.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                 split=False)
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(content=" ", left=1, right=0),
    ])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
        special_tokens=[(bos, vocab[bos])],
    )
    return tok


@functools.cache
def _tokenizer_json(family: str) -> str:
    """The family's trained `tokenizers` tokenizer, as JSON (cached: training is the slow
    part and is deterministic)."""
    spec = _SPECS[family]
    if family == "llama3":
        tok = _byte_level_tokenizer(_LLAMA3_SPLIT, False, spec["special"], spec["bos"])
    elif family in ("qwen2", "qwen3"):
        tok = _byte_level_tokenizer(_QWEN_SPLIT, True, spec["special"], None)
        if spec.get("extra"):
            from tokenizers import AddedToken
            tok.add_tokens([AddedToken(t, special=False, normalized=False)
                            for t in spec["extra"]])
    elif family == "mistral":
        tok = _sentencepiece_bpe_tokenizer(spec["special"], spec["bos"], spec["unk"])
    else:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return tok.to_str()


def make_tokenizer(family: str, generation_template: bool = False):
    """A `transformers.PreTrainedTokenizerFast` for the family, chat template included."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = _SPECS[family]
    named = {k: spec[k] for k in ("bos", "eos", "pad", "unk") if spec.get(k)}
    # The remaining special tokens (headers, <|im_start|>, [INST] …); transformers 5 saves
    # them as `extra_special_tokens` (4.x called them `additional_special_tokens`).
    extra = [t for t in spec["special"] if t not in named.values()]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(family)),
        **{f"{k}_token": v for k, v in named.items()},
        extra_special_tokens=extra,
        chat_template=chat_template(family, generation_template),
        model_max_length=MAX_POS,
        clean_up_tokenization_spaces=False,
    )


# --------------------------------------------------------------------------- models


def _config(family: str, vocab_size: int, tied: bool, ids: dict):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POS, rms_norm_eps=1e-6, tie_word_embeddings=tied,
        dtype="float32", bos_token_id=ids["bos"], eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )
    if family == "llama3":
        # transformers 5 takes (and saves) RoPE settings as `rope_parameters`, with
        # rope_theta inside; the older `rope_scaling` + `rope_theta` keys are still read.
        return LlamaConfig(**common, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        })
    if family == "qwen2":
        return Qwen2Config(**common, rope_parameters={"rope_type": "default",
                                                       "rope_theta": 1000000.0})
    if family == "qwen3":
        return Qwen3Config(**common, head_dim=16, rope_parameters={"rope_type": "default",
                                                                    "rope_theta": 1000000.0})
    if family == "mistral":
        return MistralConfig(**common, head_dim=16, sliding_window=None,
                             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def make_hf_dir(root: Path, family: str, tied: bool = False, sharded: bool = False,
                seed: int = 0, generation_template: bool = False) -> Path:
    """Write `root/<family>[-tied][-sharded]/` — config.json, safetensors weights (sharded
    with an index when asked), generation_config.json and the tokenizer files — and
    return it.  The caller's torch RNG state is left untouched."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    spec = _SPECS[family]
    out = Path(root) / (family + ("-tied" if tied else "") + ("-sharded" if sharded else ""))
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = make_tokenizer(family, generation_template)
    tid = tokenizer.convert_tokens_to_ids
    gen_eos = spec["gen_eos"]
    ids = {
        "bos": tid(spec["config_bos"]),
        "eos": [tid(t) for t in gen_eos] if isinstance(gen_eos, list) else tid(gen_eos),
        "pad": tid(spec["pad"]),
    }
    config = _config(family, len(tokenizer), tied, ids)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            # Non-trivial norms and biases too: a loader that skips one gets caught.
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    model.eval()

    if sharded:
        model.save_pretrained(out, max_shard_size="100KB")
    else:
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
        do_sample=True, temperature=0.7, top_p=0.8,
    ).save_pretrained(out)
    return out
