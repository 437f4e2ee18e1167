"""The trainer's weight push reaches the student generation actor whole or not at all, and only
between batches.

- Pushed weights change what the actor samples, and the original weights bring its samples back.
- A packet that does not fit (a tensor missing, a wrong shape) is refused before anything is written:
  the actor keeps its weights exactly.
- A push made while a batch is being made ahead is applied to the next batch, not inside this one.
- On the CPU a packet from the object store is used in place, not copied; a writable one is copied.
- The student actor, killed between batches after the trainer that pushed its weights has ended,
  takes them again.
"""
import contextlib
import time

import pytest
import ray
import torch
from test_fault_tolerance import _our_processes

from actors.models import load_model
from actors.weights import WeightsMismatch, apply, digest, pack, unpack
from studyhall.config import ModelConfig, load_config
from train.data import Example
from train.distill import close, start_rollout
from train.train_loop import push

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]

QUESTIONS = ["Name a color.", "What do bees make?", "Count to three.", "Where do fish live?"]


def _examples():
    return [Example(f"q{i}", [{"role": "user", "content": q}], "a reference answer") for i, q in enumerate(QUESTIONS)]


def _state(noise: float = 0.0):
    """The tiny student's weights, each parameter moved by seeded noise (tied ones stay tied)."""
    model = load_model(ModelConfig(path="tiny:student", dtype="float32"), torch.device("cpu"))
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    return model.state_dict()


def _push(rollout, state, step):
    push(rollout, pack(state, step))


@contextlib.contextmanager
def _rollout(cfg, train, val):
    """A rollout actor with its teacher and student, closed (placement group freed) afterwards."""
    rollout, pair_name = start_rollout(cfg, train, val, None)
    try:
        yield rollout
    finally:
        close(rollout, pair_name)


def test_a_packet_round_trips_exactly_and_sends_tied_tensors_once():
    model = load_model(ModelConfig(path="tiny:student", dtype="float32"), torch.device("cpu"))
    state = model.state_dict()
    packet = pack(state, 7)
    back = unpack(packet)
    assert back.keys() == state.keys() and packet.step == 7
    assert all(torch.equal(back[k], v) for k, v in state.items())
    tied = model.config.tie_word_embeddings
    assert ("lm_head.weight" in packet.aliases) == tied and len(packet.arrays) + len(packet.aliases) == len(state)
    half = unpack(pack(state, 7, torch.bfloat16))  # bf16 travels as int16 bits
    assert all(torch.equal(half[k], v.to(torch.bfloat16)) for k, v in state.items() if v.is_floating_point())


def test_a_cpu_model_computes_from_a_packet_read_from_the_object_store_and_copies_a_writable_one():
    model = load_model(ModelConfig(path="tiny:student", dtype="float32"), torch.device("cpu"))
    state = _state(0.5)
    stored = ray.get(ray.put(pack(state, 1)))  # read-only arrays in the object store
    apply(model, stored)
    assert digest(model.state_dict()) == digest(state)
    name = "model.embed_tokens.weight"
    assert model.state_dict()[name].data_ptr() == stored.arrays[name].ctypes.data  # no copy
    assert (model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()) == model.config.tie_word_embeddings

    other = load_model(ModelConfig(path="tiny:student", dtype="float32"), torch.device("cpu"))
    apply(other, pack(state, 1))  # writable arrays over `state`'s tensors: copied, so later changes stay out
    with torch.no_grad():
        state[name].add_(1.0)
    assert digest(other.state_dict()) == digest(model.state_dict()) != digest(state)


@pytest.mark.parametrize("spoil", ["missing", "shape", "extra"])
def test_a_packet_that_does_not_fit_writes_nothing(spoil):
    model = load_model(ModelConfig(path="tiny:student", dtype="float32"), torch.device("cpu"))
    before = digest(model.state_dict())
    new = dict(_state(0.5))
    name = sorted(k for k in new if k.endswith("mlp.down_proj.weight"))[-1]  # the last layer: the others would be written first
    if spoil == "missing":
        del new[name]
    elif spoil == "shape":
        new[name] = new[name][:, :-1].clone()
    else:
        new["model.extra.weight"] = torch.zeros(2)
    with pytest.raises(WeightsMismatch, match="nothing applied"):
        apply(model, pack(new, 1))
    assert digest(model.state_dict()) == before


def test_pushed_weights_change_what_the_generation_actor_samples():
    cfg = load_config("tiny", ["answer_tokens=12"])
    val = _examples()[:3]
    with _rollout(cfg, [], val) as rollout:
        def texts():
            return [s["prediction"] for s in ray.get(rollout.sample_student.remote(val, 1, 5))]

        original = texts()
        assert texts() == original  # same seed, same weights: the same samples

        state = _state()
        _push(rollout, _state(0.5), 1)
        changed = texts()
        assert changed != original
        assert ray.get(rollout.generation_weights.remote()) == {"step": 1, "sha256": digest(_state(0.5))}

        _push(rollout, state, 2)
        assert texts() == original


def test_a_failed_push_leaves_the_generation_actor_as_it_was():
    cfg = load_config("tiny", ["answer_tokens=12"])
    with _rollout(cfg, [], _examples()) as rollout:
        good = _state(0.5)
        _push(rollout, good, 1)
        kept = ray.get(rollout.generation_weights.remote())
        bad = dict(_state(2.0))
        del bad[sorted(bad)[-1]]
        _push(rollout, bad, 2)
        with pytest.raises(ray.exceptions.RayTaskError, match="WeightsMismatch"):
            ray.get(rollout.generation_weights.remote())  # applying it fails, and says why
        assert kept == {"step": 1, "sha256": digest(good)}
        assert ray.get(rollout.generation_weights.remote()) == kept  # the actor still has step 1's, whole


@ray.remote(num_cpus=0)
class _Trainer:
    """Stands in for trainer rank 0: the owner of the packet it puts, and a process that can end."""
    def push(self, rollout, state, step):
        push(rollout, pack(state, step))


def test_a_student_restarted_between_batches_takes_the_weights_of_a_trainer_that_has_ended():
    cfg = load_config("tiny", ["answer_tokens=12"])
    val = _examples()[:3]
    with _rollout(cfg, [], val) as rollout:
        trainer = _Trainer.remote()
        ray.get(trainer.push.remote(rollout, _state(0.5), 1))
        assert ray.get(rollout.generation_weights.remote())["step"] == 1  # applied
        ray.kill(trainer)  # its reference to the packet ends with it
        [student] = _our_processes("ray::StudentActor")
        student.kill()
        deadline = time.time() + 60
        while not [p for p in _our_processes("ray::StudentActor") if p.pid != student.pid] and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(5)  # and the actor is up in it
        # Ray has restarted it, with no call in flight to fail: the next batch finds it without its model
        answers = ray.get(rollout.sample_student.remote(val, 1, 5))
        assert len(answers) == len(val)
        assert ray.get(rollout.summary.remote())["faults"]["generation"]["restarts"] == {"teacher": 0, "student": 1}
        assert ray.get(rollout.generation_weights.remote()) == {"step": 1, "sha256": digest(_state(0.5))}


def _greedy_gkd(steps):
    return load_config("tiny", ["answer_tokens=12", "sample=false", "method=gkd", "gkd_lambda=1.0", "global_batch=2",
                                "micro_batch=2", f"steps={steps}", "max_staleness=1"])


def test_a_push_during_a_batch_made_ahead_waits_for_the_next_batch():
    train = _examples()
    runs = {}
    for pushed in (False, True):
        with _rollout(_greedy_gkd(3), train, []) as rollout:
            batches = [ray.get(rollout.batch.remote(1, 0, 1))]  # step 2's batch starts now, with the first weights
            if pushed:
                _push(rollout, _state(0.5), 1)  # arrives while step 2's batch is being made
            batches += [ray.get(rollout.batch.remote(s, 0, 1)) for s in (2, 3)]
            runs[pushed] = ([[r.token_ids for r in b] for b in batches], ray.get(rollout.summary.remote())["staleness_steps"])
    (plain, plain_stale), (pushed, pushed_stale) = runs[False], runs[True]
    assert pushed[:2] == plain[:2]  # steps 1 and 2: made with the first weights throughout
    assert pushed[2] != plain[2]  # step 3: made with the pushed ones
    assert pushed_stale["per_step"] == {"1": 0, "2": 1, "3": 1}
    assert plain_stale["per_step"] == {"1": 0, "2": 1, "3": 2}  # nothing pushed: the first weights stay
