"""LoRA's dropout on the CPU drawn as the gaps between dropped positions: nn.Dropout's masks from a fraction of its
random numbers."""
import math

import torch

from .compat import lora_dropouts

# Drawing gaps costs in proportion to the share dropped; above this it saves too little over one draw per element.
MAX_GAP_P = 0.25


def dropped_positions(count, p, generator=None, chunk=None):
    """The indices of range(count) that are dropped, each independently with probability p, as nn.Dropout drops
    them. A drop's index is the sum of the geometric gaps (trials up to and including the next drop) so far, minus
    one; only about count x p numbers are drawn, where nn.Dropout draws count. Gaps are drawn `chunk` at a time
    (by default almost always enough at once)."""
    expected = count * p
    chunk = chunk or int(expected + 6 * math.sqrt(expected) + 16)

    def gaps():
        return torch.empty(chunk, dtype=torch.int64).geometric_(p, generator=generator).cumsum_(0)
    ends = gaps()
    while ends[-1] <= count:
        ends = torch.cat([ends, gaps().add_(ends[-1])])
    return ends[ends <= count] - 1


class _DropPositions(torch.autograd.Function):
    """x scaled by 1 / (1 - p) with the given positions zeroed; the backward pass zeroes the same positions of the
    gradient. It keeps the positions for that (8 bytes for each dropped element: 0.4 an element at p=0.05), where
    nn.Dropout on the CPU keeps a float mask of 4 bytes an element."""

    @staticmethod
    def forward(ctx, x, positions, scale):
        ctx.save_for_backward(positions)
        ctx.scale = scale
        return _scaled_without(x, positions, scale)

    @staticmethod
    def backward(ctx, grad):
        positions, = ctx.saved_tensors
        return _scaled_without(grad, positions, ctx.scale), None, None


def _scaled_without(x, positions, scale):
    return (x * scale).reshape(-1).index_fill_(0, positions, 0).view(x.shape)


class GapDropout(torch.nn.Module):
    """nn.Dropout(p) whose masks on the CPU come from dropped_positions(): the same distribution (each element
    zeroed with probability p, the rest scaled by 1 / (1 - p)), 2-3x less time forward and backward at LoRA's 0.05.
    Other devices (their fused dropout kernels are fast) and p above MAX_GAP_P get nn.Dropout's own."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu" or self.p > MAX_GAP_P:
            return torch.nn.functional.dropout(x, self.p, training=True)
        return _DropPositions.apply(x, dropped_positions(x.numel(), self.p), 1 / (1 - self.p))

    def extra_repr(self):
        return f"p={self.p}"


def use_gap_dropout(model):
    """Replace the nn.Dropout of every LoRA branch of a peft model by a GapDropout of the same p."""
    for branches, adapter, dropout in lora_dropouts(model):
        if type(dropout) is torch.nn.Dropout:
            branches[adapter] = GapDropout(dropout.p)
