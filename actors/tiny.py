"""The `tiny` preset: small random Llama models on the SmolLM2 tokenizer, for tests.

Both are built from one seed, so every process gets the same weights. The teacher has 8 decoder
layers; the student keeps two of them (the first and the last) with the same embeddings and tied
head, the way the embedded student is sliced from SmolLM2. The six layers only the teacher has write
into the residual stream at a tenth of the usual scale, so the two models are related but not alike:
on sampled text they agree on the top token ~40% of the time and their Jensen-Shannon divergence
spreads over ~0.08-0.3 nats, so the SWITCH gate, greedy choices and sampling tests have something
to bite on. (Untouched random nets of this depth are chaotic: the pair would either agree everywhere
or nowhere.)
"""
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from actors.pruning import prune_to

SEED = 1234
TEACHER_LAYERS = 8
STUDENT_LAYERS = (0, TEACHER_LAYERS - 1)
EMBED_STD, LAYER_STD, TEACHER_ONLY_SCALE = 0.3, 0.08, 0.1


# GKT serving's tiny teacher (`tiny:guide-teacher`): wider and deeper than `tiny:teacher`, so that, as
# in real teacher/student pairs, it costs several times more per token than `tiny:student` (whose
# cost is mostly the 49k-token head). GKT passes text, so it need not be related to the student.
GUIDE_TEACHER = "guide-teacher"
GUIDE_HIDDEN, GUIDE_INTERMEDIATE, GUIDE_LAYERS, GUIDE_HEADS = 512, 1536, 24, 8


def tiny_config(role: str, tokenizer) -> LlamaConfig:
    if role == GUIDE_TEACHER:
        return LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=GUIDE_HIDDEN, intermediate_size=GUIDE_INTERMEDIATE,
            num_hidden_layers=GUIDE_LAYERS, num_attention_heads=GUIDE_HEADS, num_key_value_heads=GUIDE_HEADS // 2,
            max_position_embeddings=2048, tie_word_embeddings=True, initializer_range=LAYER_STD,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=TEACHER_LAYERS if role == "teacher" else len(STUDENT_LAYERS),
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=LAYER_STD,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny(role: str, tokenizer, dtype: torch.dtype) -> LlamaForCausalLM:
    if role == GUIDE_TEACHER:
        return _build_guide_teacher(tokenizer, dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(tiny_config("teacher", tokenizer))
        with torch.no_grad():
            model.model.embed_tokens.weight.normal_(0.0, EMBED_STD)
            for layer in model.model.layers[1:-1]:  # the layers only the teacher keeps
                layer.self_attn.o_proj.weight.mul_(TEACHER_ONLY_SCALE)
                layer.mlp.down_proj.weight.mul_(TEACHER_ONLY_SCALE)
    if role == "student":
        prune_to(model, STUDENT_LAYERS)
    return model.to(dtype)


def _build_guide_teacher(tokenizer, dtype: torch.dtype) -> LlamaForCausalLM:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED + 1)
        model = LlamaForCausalLM(tiny_config(GUIDE_TEACHER, tokenizer))
        with torch.no_grad():
            model.model.embed_tokens.weight.normal_(0.0, EMBED_STD)
    return model.to(dtype)
