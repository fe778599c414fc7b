"""The prompt: the classification question, a data set's Q&A pairs as chats (a multi-label one's as a yes/no
question per class), the one conversation shape, its rendering, and answer matching."""
import re
import string

from .cli import UserError

NO_CLASS = "(no class)"  # what an answer that names no class is reported as


def classification_question(classes):
    """The fixed classification question, built from the class names exactly as the folders spell them."""
    return (f"Classify this image into one of these categories: {', '.join(classes)}. "
            "Output only the category name.")


def multi_label_question(classes):
    """The question of a multi-label data set (each of its classes may be present or not), from the class names."""
    return f"Which of these are present in this image: {', '.join(classes)}?"


def presence_question(name):
    """The answer objective's question of one class of a multi-label data set, answered YES or NO."""
    return f"Is there {name} in this image? Answer yes or no."


YES, NO = "yes", "no"  # the answers to presence_question


def presence_rows(data):
    """The answer objective's training rows of a multi-label data set [(image path, [(presence_question, answer)],
    weight)]: for each image and class, "yes" weighing the class's label weight w where w > 0 and "no" weighing
    1 - w where w < 1 (a soft label gives both; the loss weighs each row's tokens by its weight)."""
    rows = []
    for sample in data["samples"]:
        for name in data["classes"]:
            w = sample["labels"].get(name, 0.0)
            rows += [(sample["image"], [(presence_question(name), answer)], weight)
                     for answer, weight in ((YES, w), (NO, 1 - w)) if weight > 0]
    return rows


def chat_rows(data, train_questions="all", multi_turn=True):
    """Chats of a data set [(image path, [(question, answer), ...])]: each image's chosen Q&A pairs as one
    multi-turn chat, so the image is encoded once for all of them, or (multi_turn=False, the original) one chat
    per pair. A multi-label sample has no Q&A pairs: its image alone, with none."""
    out = []
    for sample in data["samples"]:
        if "qa" not in sample:
            out.append((sample["image"], []))
            continue
        pairs = [(qa["question"], qa["answer"]) for qa in sample["qa"]
                 if train_questions == "all" or qa["question"] == data["question"]]
        out += [(sample["image"], pairs)] if multi_turn else [(sample["image"], [pair]) for pair in pairs]
    return out


def conversation(pairs):
    """The one place the chat is built, for training and evaluation alike: the image first in the first user
    turn, then each (question, answer) pair as a user and an assistant turn; an answer of None is left for
    the model to write."""
    messages = []
    for i, (question, answer) in enumerate(pairs):
        content = [{"type": "image"}] if i == 0 else []
        messages.append({"role": "user", "content": content + [{"type": "text", "text": question}]})
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def render_segments(processor, pairs, end_ids=None):
    """A chat of one image and its (question, answer) pairs as text segments [(text, is_answer)], rendered by the
    processor's chat template; joined, they are the whole chat. Each answer is what the chat gains from the
    generation prompt to the end of the assistant turn, as TRL renders a completion; a final answer of None
    leaves the chat at the generation prompt.

    An answer with none of the end tokens (end_token_ids; by default the tokenizer's eos) gets the first:
    llava-hf's template closes the assistant turn with a space instead of </s>, and a model never shown
    its end token never learns to stop.
    """
    tokenizer = processor.tokenizer
    ends = tokenizer.convert_ids_to_tokens(list(end_ids)) if end_ids is not None else [tokenizer.eos_token]
    messages = conversation(pairs)
    segments, done = [], ""
    for turn in range(1, len(messages) + 1):
        is_answer = messages[turn - 1]["role"] == "assistant"
        text = processor.apply_chat_template(messages[:turn], tokenize=False, add_generation_prompt=not is_answer)
        if not text.startswith(done):
            raise UserError("the chat template renders a conversation differently from its first turns, so "
                            "answers cannot be told apart; use train_questions=classification")
        piece = text[len(done):]
        if is_answer and not any(end in piece for end in ends):
            piece = piece.rstrip() + ends[0]
        segments.append((piece, is_answer))
        done = text
    return segments


def render(processor, question, answers, end_ids=None):
    """Prompt text and one completion text per answer, exactly as training renders them."""
    prompt = render_segments(processor, [(question, None)], end_ids)[0][0]
    return prompt, [render_segments(processor, [(question, a)], end_ids)[1][0] for a in answers]


def normalise(text):
    """Case, runs of spaces, '-' and '_' and surrounding punctuation do not matter when matching a class."""
    text = re.sub(r"[\s_\-]+", " ", text.strip().lower())
    return text.strip(string.punctuation + " ")


def match_answer(answer, classes):
    """The class an answer names exactly (after normalise), or None."""
    wanted = normalise(answer)
    for name in classes:
        if normalise(name) == wanted:
            return name
    return None

