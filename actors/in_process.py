"""Model workers called in this process the way the SWITCH controller calls Ray actors, so its
planning and bookkeeping run in fast tests without Ray (tests/actors/test_controller_in_process_on_cpu.py).

A call runs at once and its result waits in a `Done`; `resolve` and `first_ready` read a `Done` or
a Ray ObjectRef alike, which is all the controller and LMWorker.score need from either.
"""
import ray


class Done:
    """The result of a call that already ran, standing where an ObjectRef would."""

    def __init__(self, value):
        self.value = value


def resolve(ref):
    """The value behind a Done or an ObjectRef."""
    return ref.value if isinstance(ref, Done) else ray.get(ref)


def first_ready(refs: list):
    """One finished result among `refs`: a Done is finished from the start."""
    done = [r for r in refs if isinstance(r, Done)]
    return done[0] if done else ray.wait(refs, num_returns=1)[0][0]


class _Call:
    def __init__(self, method):
        self.method = method

    def remote(self, *args, **kwargs):
        # As Ray resolves ObjectRefs passed as arguments (not those inside a list), so here Dones.
        args = [a.value if isinstance(a, Done) else a for a in args]
        kwargs = {k: v.value if isinstance(v, Done) else v for k, v in kwargs.items()}
        return Done(self.method(*args, **kwargs))


class InProcess:
    """A worker (e.g. an LMWorker) whose methods are called as `handle.method.remote(...)`."""

    def __init__(self, worker):
        self.worker = worker

    def __getattr__(self, name: str) -> _Call:
        return _Call(getattr(self.worker, name))
