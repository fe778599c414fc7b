"""Tiny, randomly initialised vision-language models of real architectures, built offline.

They are saved to a folder and reloaded by the scripts through the same
`from_pretrained` path users take with the real checkpoints.
"""
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# The chat template shipped with HuggingFaceTB/SmolVLM-256M-Instruct.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Text the byte-level BPE learns merges from, so prompts stay short; any other word still
# tokenises, byte by byte.
CORPUS = [
    "Classify the image into one of these categories: . Output only the category name.",
    "User: Assistant: What is in this image? Describe the condition of the solar panel.",
    "red green blue yellow circle square stripes Bird-drop Clean Dusty Electrical-damage",
    "Physical-Damage Snow-Covered functional defective possibly likely",
]


def _tokenizer(special_tokens, bos, eos, pad, chat_template):
    """A byte-level BPE tokenizer trained on CORPUS, with the given special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   chat_template=chat_template)


def build_tiny_smolvlm(folder, image_longest_edge=2048, head_std=None, patch_size=16, tile=512):
    """Save a tiny Idefics3 model with SmolVLM's geometry and processor settings to `folder`.

    Tiles are 512 px, patches 16 px and the pixel shuffle factor 4, so each tile becomes 64 image
    tokens as in SmolVLM-256M; only the widths and depths are tiny. `head_std` re-initialises the output
    head at that scale. A larger `patch_size` (64: 4 image tokens a tile) makes a model whose forward pass
    costs almost nothing, for timing what surrounds it; the processor still makes SmolVLM's pixel tensors. A
    smaller `tile` (SmolVLM's is 512 px) makes a model that trains in seconds.
    """
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor)

    folder = Path(folder)
    grid = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
                "<global-img>", *grid, "<end_of_utterance>"]
    tokenizer = _tokenizer(specials, bos="<|im_start|>", eos="<end_of_utterance>", pad="<|im_end|>",
                           chat_template=SMOLVLM_CHAT_TEMPLATE)
    tokenizer.add_special_tokens({"additional_special_tokens": specials[3:]})
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": image_longest_edge}, max_image_size={"longest_edge": tile},
        do_image_splitting=True, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=(tile // patch_size) ** 2 // 16,
                                  chat_template=SMOLVLM_CHAT_TEMPLATE)
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=tile, patch_size=patch_size, hidden_act="gelu_pytorch_tanh",
                           layer_norm_eps=1e-6),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         hidden_act="silu", rms_norm_eps=1e-5, rope_theta=100000.0,
                         max_position_embeddings=4096, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        scale_factor=4, image_token_id=tokenizer.convert_tokens_to_ids("<image>"), tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    model = Idefics3ForConditionalGeneration(config)
    if head_std is not None:
        # LoRA leaves the output head as it is: a random head of the default std 0.02 over 64 features cannot
        # express a confident answer, a trained model's head (this scale) can.
        torch.nn.init.normal_(model.lm_head.weight, std=head_std)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# The chat template shipped with llava-hf/llava-1.5-7b-hf. It closes the assistant turn with a space,
# not with </s>: the pipeline, not the template, has to add the end token the model must learn.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def build_tiny_llava(folder, tokenizer=None, vision_config=None, text_config=None, patch_size=16):
    """Save a tiny LLaVA-1.5-architecture model (CLIP vision tower, Llama text) to `folder`.

    The processor settings are llava-1.5-hf's (CLIP image processor, CLS token dropped by the "default"
    feature strategy) but on 64 px crops with 16 px patches, so each image is 16 image tokens. The
    accuracy benchmark's stand-in gives its own `tokenizer` (LLaVA's chat template is set on it), sizes
    (`vision_config` with its image_size, `text_config`) and `patch_size`.
    """
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    folder = Path(folder)
    if tokenizer is None:
        tokenizer = _tokenizer(["<unk>", "<s>", "</s>", "<image>", "<pad>"], bos="<s>", eos="</s>", pad="<pad>",
                               chat_template=LLAVA_CHAT_TEMPLATE)
        tokenizer.add_special_tokens({"unk_token": "<unk>", "additional_special_tokens": ["<image>"]})
    tokenizer.chat_template = LLAVA_CHAT_TEMPLATE
    vision_config = vision_config or dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, image_size=64)
    image_size = vision_config["image_size"]
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_CHAT_TEMPLATE)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", **vision_config, patch_size=patch_size),
        text_config=text_config or dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=64,
                                        intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // patch_size) ** 2, vision_feature_select_strategy="default",
        vision_feature_layer=-2)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
