"""train.attention: the attention kernel the trainer's student runs (the generation actors keep the model's own).

On the CPU, PyTorch's fused attention (sdpa) is slow to differentiate at the trainer's lengths: for one demo
micro-batch (8 rows of 108 tokens, bf16 autocast, one thread) its backward took 0.47 s of a 2.35 s forward and
backward, and the same step with eager attention (matmuls and a softmax) took 1.94 s. On a GPU the fused kernels
are the fast ones, and eager's L x L scores cost memory, so `auto` keeps sdpa there.
"""
def choose(setting: str, on_gpu: bool) -> str:
    """The HF attn_implementation for train.attention=`setting` on this device."""
    if setting != "auto":
        return setting
    return "sdpa" if on_gpu else "eager"
