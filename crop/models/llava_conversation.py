"""LLaVA-1.5's conversation (``vicuna_v1``) and its tokenization, for training and inference alike.

One builder renders the text and remembers which characters the assistant wrote; one tokenizer call
turns the whole text into ids and a label mask. ``crop train-plc`` tokenizes a full conversation
with it; ``crop eval`` renders the same template with an open assistant turn (the generation
prompt) and tokenizes it with the same call, so a question reaches the model as the same ids in
both (the prompt part of a training row equals the inference prompt, tested with a Llama-style
SentencePiece tokenizer).

The template (LLaVA's ``conv_vicuna_v1``: separator style TWO, ``sep=" "``, ``sep2="</s>"``)::

    {system} USER: <image>\\n{question} ASSISTANT: {answer}</s>USER: {question 2} ASSISTANT: {answer 2}</s>
                                                  '-- supervised --'                          '-- supervised --'

Why the whole text is tokenized at once: LLaVA's ``preprocess_v1`` tokenizes the full conversation
and masks the non-assistant parts by position, and inference tokenizes the full prompt. Encoding
turn by turn differs with SentencePiece/Metaspace tokenizers (Llama): each separately encoded piece
gets its own leading "▁", e.g. ``USER`` after ``</s>`` becomes ``▁USER``, so the model would train
on ids it never sees at inference. Labels come from the fast tokenizer's character offsets (a
token is supervised when it starts inside an answer span), which is exact where LLaVA's
length arithmetic (``len(tokenizer(instruction)) - 2``) is an approximation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the user's questions.")
USER, ASSISTANT = "USER", "ASSISTANT"
IMAGE_PLACEHOLDER = "<image>"
EOS_TEXT = "</s>"  # Vicuna's sep2; rendered as text, the tokenizer maps it to its EOS id
IGNORE_INDEX = -100  # label of tokens that carry no loss (PyTorch's cross-entropy default)


@dataclass(frozen=True)
class Conversation:
    """Rendered conversation text and the ``[start, end)`` character spans that carry labels.

    Each span is one assistant answer with its leading space and its ``</s>``; a generation
    prompt (open assistant turn) has no span for its last turn.
    """

    text: str
    supervised_spans: tuple[tuple[int, int], ...]


def user_message(message: str, has_image: bool, image_placeholder: str = IMAGE_PLACEHOLDER) -> str:
    """LLaVA-1.5's first user turn: the image placeholder on its own line, then the text."""
    return f"{image_placeholder}\n{message}" if has_image else message


def render_vicuna_v1(turns: Sequence[tuple[str, str | None]], system: str = VICUNA_V1_SYSTEM,
                     eos_text: str = EOS_TEXT) -> Conversation:
    """``[(user, assistant), ...]`` -> the ``vicuna_v1`` text; ``assistant=None`` on the last turn
    leaves ``ASSISTANT:`` open for generation (what ``crop eval`` feeds the model)."""
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    text = f"{system} " if system else ""
    spans: list[tuple[int, int]] = []
    for i, (user, answer) in enumerate(turns):
        text += f"{USER}: {user} {ASSISTANT}:"
        if answer is None:
            if i != len(turns) - 1:
                raise ValueError(f"turn {i}: only the last turn may be left open")
            break
        start = len(text)
        text += f" {answer}{eos_text}"
        spans.append((start, len(text)))
    return Conversation(text, tuple(spans))


def generation_prompt(message: str, has_image: bool, image_placeholder: str = IMAGE_PLACEHOLDER,
                      system: str = VICUNA_V1_SYSTEM) -> str:
    """One user turn and an open assistant turn: ``"{system} USER: <image>\\n{message} ASSISTANT:"``."""
    return render_vicuna_v1([(user_message(message, has_image, image_placeholder), None)], system).text


def tokenize_conversation(conv: Conversation, tokenizer: Any) -> tuple[list[int], list[int]]:
    """Whole-text tokenization -> ``(input_ids, labels)``; labels are :data:`IGNORE_INDEX` outside
    the supervised spans.

    The call is the tokenizer's default one (special tokens as the tokenizer adds them, e.g.
    Llama's BOS), the same call that encodes an inference prompt, so the ids agree by
    construction. A token is supervised when its first character lies in a span (``"▁red"``
    starts at the space after ``ASSISTANT:``, so the answer's first token is supervised, the
    colon's is not); special tokens added by the tokenizer have empty offsets at 0 and are not.
    """
    try:
        enc = tokenizer(conv.text, return_offsets_mapping=True)
    except NotImplementedError as err:  # Python ("slow") tokenizers have no offsets
        raise ValueError(f"{type(tokenizer).__name__} gives no character offsets; load a fast tokenizer") from err
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for i, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start and any(a <= start < b for a, b in conv.supervised_spans):
            labels[i] = ids[i]
    return ids, labels
