"""The trained student's weights on their way from trainer rank 0 to the generation actor.

A `Packet` holds each distinct tensor once (tied embeddings travel once, with the names that share
them) as a numpy array, which Ray writes into the object store with one copy and hands out of it
with none; a torch tensor would go through torch's own pickling, several copies per hop. The
arrays are in the generation actor's dtype: bf16 halves the bytes where it runs in bf16 (numpy has
no bf16, so those travel as their int16 bits).

`apply` checks the whole packet against the model (every name, shape, nothing missing or extra)
before it writes anything, so a packet that is partial or malformed leaves the model's weights as
they were. On the CPU a model takes a packet from the object store without a copy.
"""
import dataclasses
import hashlib
import warnings

import numpy as np
import torch

BITS = {torch.bfloat16: torch.int16}  # dtypes numpy lacks, sent as same-width integers


class WeightsMismatch(ValueError):
    """A packet that does not fit the model it is applied to; nothing was written."""


@dataclasses.dataclass
class Packet:
    step: int  # the optimizer step these weights come from
    arrays: dict[str, np.ndarray]
    dtypes: dict[str, str]  # name -> the torch dtype the array carries ("bfloat16" travels as int16 bits)
    aliases: dict[str, str]  # name -> the name whose tensor it shares (tied weights)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def pack(state_dict: dict[str, torch.Tensor], step: int, wire_dtype: torch.dtype | None = None) -> Packet:
    """The state dict as numpy, each storage once; floating tensors cast to `wire_dtype` if given.
    The arrays may share memory with the tensors: put the packet in the object store (a copy) before
    the tensors change."""
    arrays, dtypes, aliases, seen = {}, {}, {}, {}
    for name, tensor in state_dict.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        t = tensor.detach()
        if wire_dtype is not None and t.is_floating_point():
            t = t.to(wire_dtype)
        t = t.cpu().contiguous()
        dtypes[name] = str(t.dtype).removeprefix("torch.")
        arrays[name] = (t.view(BITS[t.dtype]) if t.dtype in BITS else t).numpy()
    return Packet(step, arrays, dtypes, aliases)


def unpack(packet: Packet) -> dict[str, torch.Tensor]:
    """The full state dict again (aliases included), as tensors over the packet's arrays (no copy)."""
    tensors = {}
    with warnings.catch_warnings():  # the object store's buffers are read-only; these are only read
        warnings.simplefilter("ignore", UserWarning)
        for name, array in packet.arrays.items():
            dtype = getattr(torch, packet.dtypes[name])
            t = torch.from_numpy(array)
            tensors[name] = t.view(dtype) if dtype in BITS else t
    return {**tensors, **{name: tensors[source] for name, source in packet.aliases.items()}}


def check(model: torch.nn.Module, packet: Packet) -> dict[str, torch.Tensor]:
    """The packet's tensors, once every one of the model's weights is there with its shape."""
    own = model.state_dict()
    try:
        new = unpack(packet)
    except (KeyError, AttributeError, TypeError, ValueError, RuntimeError) as err:
        raise WeightsMismatch(f"weights of step {packet.step}: unreadable packet ({err})") from None
    missing, extra = sorted(own.keys() - new.keys()), sorted(new.keys() - own.keys())
    if missing or extra:
        raise WeightsMismatch(f"weights of step {packet.step}: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                              f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}; nothing applied")
    for name, tensor in own.items():
        if new[name].shape != tensor.shape:
            raise WeightsMismatch(f"weights of step {packet.step}: {name} has shape {tuple(new[name].shape)}, "
                                  f"the model's is {tuple(tensor.shape)}; nothing applied")
        if new[name].is_floating_point() != tensor.is_floating_point():
            raise WeightsMismatch(f"weights of step {packet.step}: {name} is {new[name].dtype}, the model's "
                                  f"{tensor.dtype}; nothing applied")
    return new


@torch.no_grad()
def apply(model: torch.nn.Module, packet: Packet) -> None:
    """Put the packet's weights into the model, all or nothing: it is checked whole first.

    A packet read from the object store is read-only and lives as long as a tensor uses it, so a CPU
    model of the same dtypes computes from its arrays directly (the load costs no copy: 310 MB took
    ~0.1 s, on SWITCH's critical path). Otherwise, e.g. on a GPU or from a writable packet that
    may change under the model, the model's own tensors are overwritten.
    """
    new = check(model, packet)
    own = model.state_dict()
    if all(not array.flags.writeable for array in packet.arrays.values()) and all(
            t.device.type == "cpu" and new[name].dtype == t.dtype for name, t in own.items()):
        model.load_state_dict(new, assign=True)
        return
    for name, tensor in own.items():
        tensor.copy_(new[name])


def digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: equal digests, equal weights."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update((t.view(BITS[t.dtype]) if t.dtype in BITS else t).numpy().tobytes())
    return h.hexdigest()
