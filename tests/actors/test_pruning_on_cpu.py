"""Depth pruning on tiny random models: the layer choice follows scores computed here by hand, and the
pruned folder is a working HF model (from_pretrained, generate with a KV cache)."""
import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from actors.calibration import batches, with_reference
from actors.pruning import choose_layers, prune_to, score_layers
from actors.tiny import TEACHER_LAYERS, build_tiny
from cluster.cli import main

TEXTS = ["The cat sat on the mat and looked at the birds outside.", "Why is the sky blue?",
         "Write a short poem about rivers, mountains and the long road home."]


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer):
    return build_tiny("teacher", tiny_tokenizer, torch.float32).eval()


@pytest.fixture(scope="module")
def sequences(tiny_tokenizer):
    return [tiny_tokenizer(text)["input_ids"] for text in TEXTS]


def _stream_by_hand(model, sequences) -> list[torch.Tensor]:
    """h_0..h_L for each sequence alone (no padding): hidden states with the final norm taken out,
    so the last one is the last layer's own output. Token rows of all sequences, concatenated."""
    bare = copy.deepcopy(model)
    bare.model.norm = torch.nn.Identity()
    with torch.no_grad():
        per_sequence = [bare(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states for ids in sequences]
    return [torch.cat([states[i][0] for states in per_sequence]) for i in range(len(per_sequence[0]))]


def test_block_influence_keeps_the_layers_a_hand_computed_score_ranks_highest(tiny, sequences):
    h = _stream_by_hand(tiny, sequences)
    by_hand = torch.stack([(1 - torch.cosine_similarity(h[i], h[i + 1], dim=-1)).mean() for i in range(TEACHER_LAYERS)])
    keep = 3
    scores = score_layers(tiny, batches(sequences, batch_size=2), removed=TEACHER_LAYERS - keep)  # batched: padding must not count

    torch.testing.assert_close(torch.tensor(scores.block_influence, dtype=torch.float64), by_hand.double(), rtol=1e-4, atol=1e-5)
    assert scores.tokens == sum(map(len, sequences))
    assert choose_layers("block_influence", scores, keep) == sorted(by_hand.argsort(descending=True)[:keep].tolist())


def test_angular_removes_the_block_whose_ends_are_closest_and_keeps_first_and_last(tiny, sequences):
    h = _stream_by_hand(tiny, sequences)
    keep = 5
    removed = TEACHER_LAYERS - keep
    distance = {start: (torch.arccos(torch.cosine_similarity(h[start], h[start + removed], dim=-1).clamp(-1, 1)) / torch.pi).mean().item()
                for start in range(1, TEACHER_LAYERS - removed)}  # blocks strictly inside
    start = min(distance, key=distance.get)
    scores = score_layers(tiny, batches(sequences, batch_size=3), removed=removed)

    kept = choose_layers("angular", scores, keep)
    assert kept == [i for i in range(TEACHER_LAYERS) if not start <= i < start + removed]
    assert kept[0] == 0 and kept[-1] == TEACHER_LAYERS - 1
    for s, d in distance.items():
        assert scores.angular[s] == pytest.approx(d, abs=1e-5)


def _cached_matches_uncached(model, prompt: list[int], new_tokens: int = 10) -> None:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        cached = torch.stack(out.logits, dim=1)[0]
        uncached = model(input_ids=out.sequences).logits[0, len(prompt) - 1: -1]
    assert out.sequences.shape[1] == len(prompt) + new_tokens
    torch.testing.assert_close(cached, uncached, rtol=1e-4, atol=1e-4)


def test_pruned_folder_loads_and_generates_with_a_kv_cache(tmp_path, capsys):
    code = main(["prune", "--model", "tiny:teacher", "--layers", "3", "--out", str(tmp_path / "pruned"), "--samples", "2"])
    assert code == 0, capsys.readouterr().err
    folder = tmp_path / "pruned"
    record = json.loads((folder / "prune.json").read_text())
    assert len(record["kept_layers"]) == 3 and record["layers_before"] == TEACHER_LAYERS and record["samples"] == 2
    assert len(record["block_influence"]) == TEACHER_LAYERS and record["calibration_answers"]["model_greedy"] == 2
    assert (folder / "prune.png").stat().st_size > 0 and (folder / "tokenizer.json").is_file()
    assert (folder / "generation_config.json").is_file()

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    _cached_matches_uncached(model, list(range(5, 17)))


def test_data_references_are_the_calibration_answers(tmp_path, tiny_tokenizer, capsys):
    rows = [{"instruction": "Name a colour.", "response": "Blue, like the sky."},
            {"instruction": "Count to three.", "context": "Use digits.", "response": "1, 2, 3"},
            {"instruction": "Not calibrated on: beyond --samples.", "response": "-"}]
    data = tmp_path / "dolly.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["prune", "--model", "tiny:teacher", "--layers", "2", "--method", "angular", "--data", str(data), "--samples", "2",
                 "--out", str(tmp_path / "pruned")]) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "pruned" / "prune.json").read_text())
    assert record["calibration_answers"]["references"] == 2 and record["calibration_answers"]["model_greedy"] == 0
    assert record["kept_layers"] == [0, TEACHER_LAYERS - 1]  # angular keeps the ends; 2 layers leave nothing else
    prompts = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Count to three.\n\nContext:\nUse digits."}]]
    expected = [with_reference(tiny_tokenizer, messages, row["response"]) for messages, row in zip(prompts, rows)]
    assert record["tokens"] == sum(map(len, expected))


def test_per_layer_config_lists_are_cut_and_the_cache_follows_them(tmp_path):
    # Qwen2 with sliding and full attention alternating: the cache keeps a different kind of layer per index.
    types = ["sliding_attention", "full_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    config = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                         num_key_value_heads=2, use_sliding_window=True, sliding_window=4, layer_types=types)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    keep = [0, 2, 5]
    prune_to(model, keep)
    assert model.config.layer_types == [types[i] for i in keep] and model.config.num_hidden_layers == 3
    model.save_pretrained(tmp_path)

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert loaded.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    _cached_matches_uncached(loaded, list(range(3, 13)), new_tokens=8)  # longer than the window of 4


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny:teacher", "--layers", "8"], "--layers 8: tiny:teacher has 8 decoder layers; keep fewer"),
    (["--model", "tiny:teacher", "--layers", "0"], "--layers 0: must keep at least 1 layer"),
    (["--model", "tiny:teacher", "--layers", "4", "--method", "random"], "--method 'random': unknown; use block_influence or angular"),
    (["--model", "tiny:teacher", "--layers", "4", "--data", "no/such/file.jsonl"], "no/such/file.jsonl: not found"),
    (["--model", "GPT2", "--layers", "1"], "model type 'gpt2': its decoder layers are not a list"),
])
def test_bad_input_is_one_line(args, message, tmp_path, capsys):
    if args[1] == "GPT2":
        GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, bos_token_id=0, eos_token_id=0)).save_pretrained(tmp_path / "gpt2")
        args = ["--model", str(tmp_path / "gpt2"), *args[2:]]
        capsys.readouterr()
    out = tmp_path / "pruned"
    assert main(["prune", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = err.replace("\r", "\n").splitlines()  # transformers' loading bars may come first
    assert lines[-1].startswith("studyhall: error: ") and message in lines[-1] and "Traceback" not in err, err
    assert not out.exists()
