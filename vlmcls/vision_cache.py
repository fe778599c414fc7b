"""A frozen vision encoder run once per image: its outputs remembered by the image's pixels and reused in later
epochs (and by validation), for either objective."""
import hashlib

from .compat import own_forward, set_forward


def image_key(pixels, patch_mask=None):
    """A key of one image's input: a hash of its pixel values (and patch mask), with their shape and dtype."""
    import torch
    digest = hashlib.blake2b(digest_size=16)
    for tensor in (pixels, patch_mask):
        if tensor is not None:
            digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy())
    return digest.digest()


class VisionCache:
    """Replaces a frozen vision encoder's forward by one that runs the encoder only on images it has not seen and
    returns the remembered outputs of the others, as the encoder would return them.

    Only what the model reads is kept: the last hidden state and, where the model selects earlier layers
    (LLaVA's vision_feature_layer), the hidden states of those layers. Images are told apart by their pixels, so
    an augmented image is a new image. The outputs stay on the encoder's device."""

    def __init__(self, encoder, feature_layers=()):
        self.encoder_forward = encoder.forward  # the encoder's own, which runs the images not seen yet
        self.layers = [feature_layers] if isinstance(feature_layers, int) else list(feature_layers)
        self.memo = {}
        self.states = 0  # hidden states the encoder returns (embeddings and every layer), once known
        self.encoded = self.reused = 0
        set_forward(encoder, self, bound=True)

    def __call__(self, pixel_values=None, patch_attention_mask=None, **kwargs):
        import torch
        from transformers.modeling_outputs import BaseModelOutput
        masks = patch_attention_mask if patch_attention_mask is not None else [None] * len(pixel_values)
        # Outputs made under inference mode cannot enter autograd later (a trainable connector would save them):
        # they are kept apart from the others.
        inference = torch.is_inference_mode_enabled()
        keys = [(inference, image_key(p, m)) for p, m in zip(pixel_values, masks)]
        missing = [i for i, key in enumerate(keys) if key not in self.memo]
        if missing:
            rows = torch.tensor(missing, device=pixel_values.device)
            extra = {} if patch_attention_mask is None else {"patch_attention_mask": patch_attention_mask[rows]}
            out = self.encoder_forward(pixel_values[rows], **extra, **kwargs)
            hidden = out.hidden_states if self.layers else None
            self.states = len(hidden) if hidden else self.states
            for j, i in enumerate(missing):
                self.memo[keys[i]] = (out.last_hidden_state[j],
                                      {layer % self.states: hidden[layer][j] for layer in self.layers} if hidden
                                      else {})
            self.encoded += len(missing)
        self.reused += len(keys) - len(missing)
        outputs = [self.memo[key] for key in keys]
        hidden = None
        if self.layers and self.states:
            hidden = tuple(torch.stack([o[1][n] for o in outputs]) if n in outputs[0][1] else None
                           for n in range(self.states))
        return BaseModelOutput(last_hidden_state=torch.stack([o[0] for o in outputs]), hidden_states=hidden)

    def summary(self):
        return f"vision encoder: ran on {self.encoded} images, their outputs reused {self.reused} times (cache_vision)"


def vision_cache_of(model):
    """The VisionCache of the model's vision encoder, or None."""
    for module in model.modules():
        if isinstance(own_forward(module), VisionCache):
            return own_forward(module)
    return None
