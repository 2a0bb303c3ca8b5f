"""Prompt formatting and answer masking for QA fine-tuning, unlearning and scoring (DESIGN §4).

A QA pair becomes `prompt + answer + EOS`; the labels are IGNORE_INDEX (-100) on the prompt and the
token ids on the answer and the final EOS, so the answer target tokens are exactly what ℓ_i and
|y_i| of the objectives (DESIGN §5) and the normalised probability P̃ = exp(-ℓ/|y|) of the TOFU
metrics (DESIGN §6) sum over.

Formats, per model family as TOFU does it:
  plain          "Question: {q}\\nAnswer:"  +  " {a}"          (base models)
  llama2-chat    "[INST] {q} [/INST]"       +  " {a}"          (Llama-2-chat)
  chat-template  tokenizer.apply_chat_template([system, user], add_generation_prompt=True)  +  "{a}"
                 with the fixed `SYSTEM_PROMPT` and a fixed (empty) date for templates that print one.

Prompt/answer boundary: the prompt and prompt+answer are tokenized separately. When the prompt's
tokens are a prefix of the full tokens (the usual case) the full tokenization is used. When they are
not (a BPE merge across the boundary), the example becomes prompt tokens + the answer tokenized on
its own (without special tokens): the prompt is then tokenized exactly as `encode_prompt` gives it to
generation, and the masked part is exactly the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from transformers import PreTrainedTokenizerBase

from ..errors import UserInputError
from ..maths.logprobs import IGNORE_INDEX

PromptFormat = Literal["plain", "llama2-chat", "chat-template"]
"""How a question becomes a prompt (DESIGN §4); the one definition, models.py and recipes import it."""
PROMPT_FORMATS: tuple[PromptFormat, ...] = get_args(PromptFormat)
PROMPT_FORMAT_FILE = "raysimnpo_prompt_format.json"
"""The file in a saved model folder that records its prompt format (written by
`raysimnpo.models.write_prompt_format`, read back when the folder is loaded)."""

SYSTEM_PROMPT = "You are a helpful assistant. Answer the question."
"""The fixed system prompt of the chat-template format."""
CHAT_TEMPLATE_DATE = ""
"""Passed as `date_string` to chat templates that print today's date, so prompts do not change by day."""


@dataclass(frozen=True)
class EncodedExample:
    """One tokenized QA: labels are IGNORE_INDEX on the prompt, token ids on the answer targets."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_targets(self) -> int:
        """|y|: the number of answer target tokens (answer + EOS, after truncation)."""
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _short(question: str) -> str:
    return repr(question if len(question) <= 60 else question[:57] + "...")


def _check_format(prompt_format: str) -> None:
    if prompt_format not in PROMPT_FORMATS:
        raise UserInputError(
            f"prompt_format: {prompt_format!r} is not known; allowed: {', '.join(PROMPT_FORMATS)}"
        )


def _chat_template_kwargs(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """Extra variables for templates that read them: a fixed date, and no 'thinking' block."""
    template = tokenizer.chat_template
    source = template if isinstance(template, str) else " ".join(str(v) for v in (template or {}).values())
    kwargs: dict[str, Any] = {}
    if "date_string" in source:
        kwargs["date_string"] = CHAT_TEMPLATE_DATE
    if "enable_thinking" in source:
        kwargs["enable_thinking"] = False
    return kwargs


def format_prompt(tokenizer: PreTrainedTokenizerBase, question: str, prompt_format: PromptFormat) -> str:
    """The prompt text for `question` (everything before the answer)."""
    _check_format(prompt_format)
    if prompt_format == "plain":
        return f"Question: {question}\nAnswer:"
    if prompt_format == "llama2-chat":
        return f"[INST] {question} [/INST]"
    if not getattr(tokenizer, "chat_template", None):
        raise UserInputError(
            f"prompt_format: chat-template needs a tokenizer with a chat template and {type(tokenizer).__name__} "
            "has none; allowed for it: plain, llama2-chat"
        )
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **_chat_template_kwargs(tokenizer)
        )
    except Exception as exc:  # jinja2 errors, templates that reject a system message, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserInputError(
            f"prompt_format: the tokenizer's chat template failed ({type(exc).__name__}: {first}); "
            "allowed otherwise: plain, llama2-chat"
        ) from None
    if not isinstance(text, str):
        raise UserInputError(
            "prompt_format: the tokenizer's chat template did not return text; use plain or llama2-chat"
        )
    return text


def format_answer(answer: str, prompt_format: PromptFormat) -> str:
    """The answer text appended to the prompt: a leading space for plain/llama2-chat, none after a
    chat template's generation prompt (which ends with the assistant header)."""
    _check_format(prompt_format)
    return answer if prompt_format == "chat-template" else f" {answer}"


def _tokenize(tokenizer: PreTrainedTokenizerBase, text: str, prompt_format: PromptFormat) -> list[int]:
    # A rendered chat template already holds its special tokens (BOS included where the model has one).
    special = prompt_format != "chat-template"
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, question: str, prompt_format: PromptFormat
) -> list[int]:
    """Token ids of the prompt alone, for greedy generation; identical to the masked prefix of
    `encode_qa` for the same question."""
    return _tokenize(tokenizer, format_prompt(tokenizer, question, prompt_format), prompt_format)


def encode_qa(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    answer: str,
    prompt_format: PromptFormat,
    max_length: int,
) -> EncodedExample:
    """Tokenize prompt + answer + EOS with labels IGNORE_INDEX on the prompt (DESIGN §4).

    The targets are the answer tokens and a final EOS (|y| of DESIGN §5). Longer than `max_length`:
    truncated from the right (answer tokens, then EOS, are dropped). A prompt that leaves no room for
    a single target token raises UserInputError naming the question.
    """
    if max_length < 2:
        raise UserInputError(
            f"max_length: {max_length} leaves no room for a prompt and an answer; allowed: >= 2"
        )
    if not answer or not answer.strip():
        raise UserInputError(f"answer: empty for question {_short(question)}; answers must be non-empty text")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserInputError(
            f"tokenizer: {type(tokenizer).__name__} has no eos_token; set one to mark answer ends"
        )
    prompt_text = format_prompt(tokenizer, question, prompt_format)
    answer_text = format_answer(answer, prompt_format)
    prompt = _tokenize(tokenizer, prompt_text, prompt_format)
    full = _tokenize(tokenizer, prompt_text + answer_text, prompt_format)
    if full[: len(prompt)] == prompt and len(full) > len(prompt):
        answer_ids = full[len(prompt) :]
    else:  # a merge across the boundary: keep the generation-time prompt, tokenize the answer alone
        answer_ids = list(tokenizer(answer_text, add_special_tokens=False)["input_ids"])
    input_ids = prompt + answer_ids + [int(eos)]
    labels = [IGNORE_INDEX] * len(prompt) + answer_ids + [int(eos)]
    if len(prompt) >= max_length:
        raise UserInputError(
            f"max_length: the prompt of question {_short(question)} has {len(prompt)} tokens, so no answer token "
            f"fits in max_length={max_length}; raise max_length or shorten the question"
        )
    return EncodedExample(input_ids=input_ids[:max_length], labels=labels[:max_length])


@dataclass
class QAEncoder:
    """`encode_qa` and `encode_prompt` of one tokenizer and prompt format, memoised: an evaluation
    after every epoch scores and prompts the same questions and answers each time, and tokenizing
    them again would cost 0.15 s of the tiny model's 2.3 s evaluation (perf/epoch_evaluation.py)."""

    tokenizer: PreTrainedTokenizerBase
    prompt_format: PromptFormat
    _qa: dict[tuple[str, str, int], EncodedExample] = field(default_factory=dict, repr=False)
    _prompts: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def qa(self, question: str, answer: str, max_length: int) -> EncodedExample:
        key = (question, answer, max_length)
        if key not in self._qa:
            self._qa[key] = encode_qa(self.tokenizer, question, answer, self.prompt_format, max_length)
        return self._qa[key]

    def prompt(self, question: str) -> list[int]:
        if question not in self._prompts:
            self._prompts[question] = encode_prompt(self.tokenizer, question, self.prompt_format)
        return self._prompts[question]


def detect_prompt_format(
    name: str, tokenizer: PreTrainedTokenizerBase, saved_from: str | None = None
) -> PromptFormat:
    """``llama2-chat`` for Llama-2 chat models and their TOFU fine-tunes (by name, or by the
    ``_name_or_path`` a local config.json was saved from); else ``chat-template`` when the tokenizer has
    one; else ``plain``."""
    if any(_is_llama2_chat(n) for n in (name, saved_from) if n):
        return "llama2-chat"
    if getattr(tokenizer, "chat_template", None):
        return "chat-template"
    return "plain"


def _is_llama2_chat(name: str) -> bool:
    text = name.lower().replace("_", "-")
    llama2 = "llama-2" in text or "llama2" in text
    return (llama2 and "chat" in text) or "tofu-ft-llama2" in text
