"""The `tiny` preset: small random Llama models on the SmolLM2 tokenizer, for tests.

They are built from a seed, so every process that builds them gets the same weights. The teacher is
about 7x the student's cost per token (wider, deeper), as a real teacher/student pair would be, and
a larger init scale makes their next-token distributions peaked instead of near-uniform, so
divergences, greedy choices and sampling tests have something to bite on.
"""
import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "teacher": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4),
    "student": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
}
SEEDS = {"teacher": 1234, "student": 5678}
INIT_SCALE = 0.25


def build_tiny(role: str, tokenizer, dtype: torch.dtype) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=INIT_SCALE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[role],
    )
    devices_rng = torch.random.fork_rng(devices=[])
    with devices_rng:
        torch.manual_seed(SEEDS[role])
        model = LlamaForCausalLM(config)
    return model.to(dtype)
