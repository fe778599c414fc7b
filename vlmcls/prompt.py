"""The prompt: the classification question, the one conversation shape, its rendering, and answer matching."""
import re
import string


def classification_question(classes):
    """The fixed classification question, built from the class names exactly as the folders spell them."""
    return (f"Classify this image into one of these categories: {', '.join(classes)}. "
            "Output only the category name.")


def conversation(question, answer=None):
    """The one place the chat is built, for training and evaluation alike: a user turn with the image first."""
    example = {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]}
    if answer is not None:
        example["completion"] = [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return example


def render_example(processor, example, end_ids=None):
    """Prompt and completion text of a conversation() example, rendered by the processor's chat template as
    TRL renders it (the completion is what the full chat adds after the generation prompt).

    A completion with none of the end tokens (end_token_ids; by default the tokenizer's eos) gets the first:
    llava-hf's template closes the assistant turn with a space instead of </s>, and a model never shown
    its end token never learns to stop.
    """
    from trl.data_utils import apply_chat_template
    text = apply_chat_template(example, processor)
    tokenizer = processor.tokenizer
    ends = tokenizer.convert_ids_to_tokens(list(end_ids)) if end_ids is not None else [tokenizer.eos_token]
    if not any(end in text["completion"] for end in ends):
        text["completion"] = text["completion"].rstrip() + ends[0]
    return text


def render(processor, question, answers, end_ids=None):
    """Prompt text and one completion text per answer, exactly as training renders them."""
    rendered = [render_example(processor, conversation(question, a), end_ids) for a in answers]
    return rendered[0]["prompt"], [r["completion"] for r in rendered]


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

