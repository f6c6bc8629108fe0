"""PLC trains on the ids it is evaluated with: one vicuna_v1 builder, whole-conversation tokenization.

Reference tokenizer: transformers' own ``LlamaTokenizer`` class (SentencePiece-style BPE with byte
fallback behind a ``Metaspace`` pre-tokenizer, "▁" for spaces) over a small BPE vocabulary trained
here with the ``tokenizers`` library, so nothing is downloaded. ``legacy=False`` prepends "▁" to
the first piece of the text only (``prepend_scheme="first"``, the llava-hf tokenizers' setting),
``legacy=True`` to every piece between special tokens (``"always"``). Encoding a conversation turn
by turn gives each separately encoded piece its own leading "▁", which is why LLaVA's training
preprocessing and inference both tokenize the whole text.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tokenizers")

from crop.eval.prompts import vicuna_v1_prompt  # noqa: E402  (crop eval's prompt, Frontend.prompt)
from crop.models.llava_conversation import (  # noqa: E402
    IGNORE_INDEX,
    render_vicuna_v1,
    tokenize_conversation,
)
from crop.train.plc import DataSection, conversation_turns, prepare_sample, tokenize_turns  # noqa: E402

N_IMAGE = 5  # placeholders per image (68 for PLC at 7B shapes; small here)

# LLaVA-1.5's conv_vicuna_v1 written out by hand (system, " ", "USER: ... ASSISTANT: answer</s>" per
# turn): the reference the trainer's rendering must tokenize like.
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
QUESTION = "What color is the box?\nAnswer the question using a single word or phrase."
REFERENCE = (f"{SYSTEM} USER: <image>\n{QUESTION} ASSISTANT: red</s>"
             "USER: And the other one? ASSISTANT: blue green</s>")
TURNS = [(f"<image>\n{QUESTION}", "red"), ("And the other one?", "blue green")]

CORPUS = [SYSTEM, QUESTION, "USER: ASSISTANT: red blue green yellow", "And the other one? Describe the image."]


@pytest.fixture(scope="module", params=[False, True], ids=["prepend_first", "prepend_always"])
def llama_tokenizer(request):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]  # Llama's byte fallback
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    bpe.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=420, special_tokens=specials,
                                                             show_progress=False))
    model = json.loads(bpe.to_str())["model"]
    tok = LlamaTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]],
                         legacy=request.param, add_bos_token=True)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"], "pad_token": "<pad>"})  # as llava-hf
    scheme = json.loads(tok.backend_tokenizer.to_str())["pre_tokenizer"]["prepend_scheme"]
    assert scheme == ("always" if request.param else "first")
    return tok


def image_id(tok) -> int:
    return tok.convert_tokens_to_ids("<image>")


def collapse(ids: list[int], image: int) -> list[int]:
    """Undo the placeholder expansion: each run of image ids -> one image id."""
    return [t for i, t in enumerate(ids) if t != image or i == 0 or ids[i - 1] != image]


def piecewise_ids(tok, turns) -> list[int]:
    """How a turn-by-turn encoder sees the same conversation (BOS, then each piece on its own)."""
    ids = [tok.bos_token_id]
    for i, (user, answer) in enumerate(turns):
        prefix = f"{SYSTEM} " if i == 0 else ""
        ids += tok(f"{prefix}USER: {user} ASSISTANT:", add_special_tokens=False)["input_ids"]
        ids += tok(f" {answer}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return ids


def test_the_trainer_tokenizes_the_whole_conversation(llama_tokenizer):
    tok = llama_tokenizer
    ids, labels = tokenize_turns(TURNS, tok, image_id(tok), N_IMAGE)
    assert len(ids) == len(labels) and ids.count(image_id(tok)) == N_IMAGE
    reference = tok(REFERENCE)["input_ids"]
    assert reference[0] == tok.bos_token_id  # Llama's BOS, added by the tokenizer's own call
    assert collapse(ids, image_id(tok)) == reference
    if not tok.legacy:  # the setting where turn-by-turn encoding inserts "▁" (here before USER)
        assert piecewise_ids(tok, TURNS) != reference


def test_the_prompt_part_equals_the_inference_prompt(llama_tokenizer):
    from crop.models.llava_plc import expand_image_tokens

    tok = llama_tokenizer
    ids, labels = tokenize_turns(TURNS[:1], tok, image_id(tok), N_IMAGE)
    first_label = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    # crop eval's PLC method: tokenizer(prompt) with the tokenizer's defaults, then the expansion
    prompt = tok(vicuna_v1_prompt(QUESTION, True))["input_ids"]
    assert ids[:first_label] == expand_image_tokens(prompt, image_id(tok), N_IMAGE)


def test_labels_are_exactly_the_answers_and_their_eos(llama_tokenizer):
    tok = llama_tokenizer
    ids, labels = tokenize_turns(TURNS, tok, image_id(tok), N_IMAGE)
    runs, current = [], []
    for i, lab in enumerate(labels):
        if lab != IGNORE_INDEX:
            assert lab == ids[i]
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    assert len(runs) == len(TURNS)
    for run, (_, answer) in zip(runs, TURNS):
        pieces = tok.convert_ids_to_tokens([ids[i] for i in run])
        assert "".join(pieces).replace("▁", " ") == f" {answer}</s>"
        before = tok.convert_ids_to_tokens(ids[:run[0]])
        assert "".join(before).endswith("ASSISTANT:")
    assert sum(1 for t in ids if t == tok.eos_token_id) == len(TURNS)  # every EOS is supervised


def test_region_sample_uses_crop_evals_message(llama_tokenizer):
    """A region record's user turn is the eval question text (question + LLaVA's short-answer suffix)."""
    tok = llama_tokenizer
    rec = {"kind": "region", "question": " What color is the box? ", "answer": "red ",
           "region_blocks": [0, 2, 1, 5], "grid_size": 8}
    from PIL import Image

    ex = prepare_sample({"json": rec, "image": Image.new("RGB", (40, 16))}, DataSection(), tok,
                        image_id(tok), N_IMAGE)
    assert conversation_turns(rec, True, DataSection()) == [(f"<image>\n{QUESTION}", "red ")]
    first_label = next(i for i, lab in enumerate(ex.labels) if lab != IGNORE_INDEX)
    assert collapse(ex.input_ids[:first_label], image_id(tok)) == tok(vicuna_v1_prompt(QUESTION, True))["input_ids"]


@pytest.mark.parametrize("turns, error", [
    ([], "at least one turn"),
    ([("a", None), ("b", "c")], "only the last turn"),
])
def test_render_refuses_malformed_turn_lists(turns, error):
    with pytest.raises(ValueError, match=error):
        render_vicuna_v1(turns)


def test_open_turn_has_no_labels(llama_tokenizer):
    conv = render_vicuna_v1([(f"<image>\n{QUESTION}", None)])
    assert conv.text == vicuna_v1_prompt(QUESTION, True) and conv.supervised_spans == ()
    ids, labels = tokenize_conversation(conv, llama_tokenizer)
    assert set(labels) == {IGNORE_INDEX} and ids == llama_tokenizer(conv.text)["input_ids"]
