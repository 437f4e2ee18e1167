"""The `studyhall` command line. User mistakes end as one line on stderr, never a traceback.

Each command imports its room (Ray, DeepSpeed, Serve) only when it runs, so `studyhall --help` and
`studyhall cluster check` answer without loading them: those imports below are lazy on purpose.
"""
import argparse
import json
import sys
from pathlib import Path

from studyhall.config import METHODS, ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="studyhall", description="Teacher/student LLMs on Ray: SWITCH distillation and GKT serving.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="SWITCH-generate answers for a prompt file (JSONL out)")
    gen.add_argument("--preset", default="smol", help="tiny | smol")
    gen.add_argument("--prompts", default=None, help="JSONL with 'prompt' or 'messages' per line (default: the embedded prompts)")
    gen.add_argument("--out", required=True, help="output JSONL, written as sequences finish")
    gen.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    gen.add_argument("--summary", default=None, help="also write the summary as JSON here")
    gen.add_argument("--no-progress", action="store_true")
    gen.add_argument("overrides", nargs="*", help="key=value, e.g. tau0=0.2 lam=0.01 gamma=4 divergence=js temperature=0.7")

    bench = sub.add_parser("bench", help="benchmarks that write JSON")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    sw = bench_sub.add_parser("switch", help="block-speculative SWITCH against per-token SWITCH")
    sw.add_argument("--preset", default="tiny")
    sw.add_argument("--out", required=True)
    sw.add_argument("--prompts", type=int, default=None, help="how many embedded prompts (default from preset)")
    sw.add_argument("overrides", nargs="*")
    bt = bench_sub.add_parser("train", help="DeepSpeed training tokens/s against a plain PyTorch loop, same model and batch")
    bt.add_argument("--preset", default="smol")
    bt.add_argument("--out", required=True)
    bt.add_argument("--steps", type=int, default=5, help="timed steps for each loop (after 2 warm-up steps)")
    bt.add_argument("overrides", nargs="*")
    bq = bench_sub.add_parser("quality", help="every method, same steps and data: ROUGE-L and teacher NLL")
    bq.add_argument("--preset", default="smol")
    bq.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: every method)")
    bq.add_argument("--steps", type=int, default=None)
    bq.add_argument("--out", required=True)
    bq.add_argument("overrides", nargs="*")
    bd = bench_sub.add_parser("distill", help="where a distillation step's time goes: seconds per step in each phase, "
                                               "one run per --vary value")
    bd.add_argument("--preset", default="smol")
    bd.add_argument("--method", default="gkd", help=" | ".join(METHODS))
    bd.add_argument("--vary", default=None, help="key=v1,v2: one run per value, e.g. train.max_staleness=0,1")
    bd.add_argument("--out", required=True, help="JSON out; a Markdown table is written next to it")
    bd.add_argument("overrides", nargs="*", help="key=value for every run, e.g. steps=8 global_batch=4 answer_tokens=32")
    br = bench_sub.add_parser("restart", help="what a killed teacher or student actor costs a SWITCH run (Ray restarts it)")
    br.add_argument("--preset", default="tiny")
    br.add_argument("--out", required=True)
    br.add_argument("--limit", type=int, default=16, help="embedded prompts generated in each run")
    br.add_argument("--kill-after", type=int, default=None, help="finished sequences before the kill (default: a quarter of --limit)")
    br.add_argument("--role", default="teacher", help="teacher | student")
    br.add_argument("overrides", nargs="*")
    gb = bench_sub.add_parser("gkt", help="GKT serving over HTTP: GKT at k, teacher alone, student alone, at 1/8/32/64 in flight")
    gb.add_argument("--preset", default="tiny")
    gb.add_argument("--out", required=True, help="JSON out; a Markdown table is written next to it")
    gb.add_argument("--requests", type=int, default=None, help="requests per mode and concurrency (default from preset)")
    gb.add_argument("--in-flight", default="1,8,32,64", help="closed-loop levels: requests kept in flight, comma-separated")
    gb.add_argument("overrides", nargs="*", help="key=value, e.g. serve.guidance_tokens=8 serve.default_max_tokens=32")
    bl = bench_sub.add_parser("load", help="GKT serving under load: the async openai client, N requests, C in flight; "
                                           "errors by type, latency and time-to-first-token percentiles, requests/s, tokens/s")
    bl.add_argument("--preset", default="tiny")
    bl.add_argument("--out", required=True, help="JSON out")
    bl.add_argument("--requests", type=int, default=64, help="chat requests to send (after 2 warm-up requests)")
    bl.add_argument("--concurrency", type=int, default=8, help="requests in flight: each client sends its next as its last is answered")
    bl.add_argument("--stream", action="store_true", help="stream the answers (server-sent events) and time the first token")
    bl.add_argument("--url", default=None, help="load a server that is already up (e.g. http://127.0.0.1:8000) instead of starting one")
    bl.add_argument("--no-progress", action="store_true")
    bl.add_argument("--rates", default=None, help="open loop instead: Poisson arrivals at each of these rates (requests/s, "
                                                   "comma-separated), --requests per rate and mode, streamed")
    bl.add_argument("--modes", default="gkt,teacher", help="with --rates: gkt | teacher | student, comma-separated")
    bl.add_argument("--p99-bound-s", type=float, default=30.0, help="with --rates: a rate is held when p99 latency is within this")
    bl.add_argument("--max-tokens", type=int, default=None, help="with --rates: max_tokens of each request (default: the preset's)")
    bl.add_argument("overrides", nargs="*", help="key=value, e.g. serve.default_max_tokens=16 serve.guidance_tokens=4")

    srv = sub.add_parser("serve", help="GKT serving on Ray Serve with an OpenAI-compatible API (blocks; Ctrl-C stops)")
    srv.add_argument("--preset", default="smol", help="tiny | smol")
    srv.add_argument("overrides", nargs="*", help="key=value, e.g. serve.port=8000 serve.guidance_tokens=16 serve.guide.num_gpus=1")

    dist = sub.add_parser("distill", help="distill the student (default: SWITCH on the embedded SmolLM2 pair) and write a report")
    dist.add_argument("--preset", default="smol", help="tiny | smol")
    dist.add_argument("--method", default=None, help=" | ".join(METHODS) + " (default from preset: switch)")
    dist.add_argument("--steps", type=int, default=None, help="optimizer steps (default from preset)")
    dist.add_argument("--data", default=None, help="JSONL/JSON/Parquet: Dolly, Alpaca, chat messages or prompt rows (default: embedded prompts)")
    dist.add_argument("--out", default="out/distill", help="report, plots, checkpoints and the trained student go here")
    dist.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    dist.add_argument("--no-progress", action="store_true")
    dist.add_argument("overrides", nargs="*", help="key=value, e.g. lr=3e-4 zero_stage=2 num_workers=2 loss=jsd beta=0.5")

    # `studyhall eval` alone evaluates a student (train/); `studyhall eval gkt` the GKT trade-off (serve/).
    # `studyhall eval` = `studyhall eval student`; overrides need the explicit `student` (or `gkt`).
    ev = sub.add_parser("eval", help="evaluate a student (eval [student]), or the GKT guidance trade-off (eval gkt)")
    _student_eval_options(ev)
    eval_sub = ev.add_subparsers(dest="eval_target", required=False)
    _student_eval_options(eval_sub.add_parser("student", help="ROUGE-L, teacher NLL, repetition and KL to the teacher of a student on held-out prompts"))
    eg = eval_sub.add_parser("gkt", help="ROUGE-L against teacher-only answers and latency, over guidance lengths k")
    eg.add_argument("--preset", default="smol")
    eg.add_argument("--out", required=True, help="JSON out; a Markdown table is written next to it")
    eg.add_argument("--prompts", type=int, default=None, help="held-out prompts: the last N embedded ones (default 32)")
    eg.add_argument("overrides", nargs="*")
    pr = sub.add_parser("prune", help="make a shallower student: keep N decoder layers, chosen on calibration text")
    pr.add_argument("--model", required=True, help="a local HF folder, a hub id, embedded:teacher or tiny:teacher")
    pr.add_argument("--layers", type=int, required=True, help="decoder layers to keep")
    pr.add_argument("--out", required=True, help="new folder: the pruned HF model, prune.json and prune.png")
    pr.add_argument("--method", default="block_influence",
                    help="block_influence (ShortGPT: keep the layers that change the hidden state most) | angular "
                         "(Gromov et al.: drop the contiguous block whose ends are most alike)")
    pr.add_argument("--data", default=None, help="calibration prompts (Dolly, Alpaca, chat or prompt rows); their reference "
                                                 "answers where present, else the model's own (default: the embedded prompts)")
    pr.add_argument("--samples", type=int, default=16, help="calibration prompts: the first K")
    rt = sub.add_parser("retokenize", help="a model on a tokenizer of its own: its byte-level BPE vocabulary cut to the first N ids "
                                           "(embedding rows kept), e.g. a student for cross-tokenizer distillation")
    rt.add_argument("--model", required=True, help="a local HF folder, a hub id or embedded:student")
    rt.add_argument("--vocab", type=int, required=True, help="ids to keep: the first N of the vocabulary, special tokens included")
    rt.add_argument("--out", required=True, help="new folder: the model and its cut tokenizer")

    cl = sub.add_parser("cluster", help="Ray cluster launcher configs")
    cluster_sub = cl.add_subparsers(dest="cluster", required=True)
    check = cluster_sub.add_parser("check", help="validate a `ray up` YAML offline, with Ray's own schema check")
    check.add_argument("file")
    return parser


def _student_eval_options(p) -> None:
    p.add_argument("--preset", default="smol")
    p.add_argument("--student", default=None, help="a student folder (e.g. OUT/student from distill); default: the preset's student")
    p.add_argument("--data", default=None, help="the data file the student was distilled on (its held-out split is used)")
    p.add_argument("--prompts", default=None, help="evaluate on every prompt of this file instead (JSONL/JSON/Parquet, the formats --data "
                                                   "takes); without answers in it, the teacher writes the references once, cached")
    p.add_argument("--out", default=None, help="also write the result as JSON here")
    if p.prog.endswith(" student"):
        p.add_argument("overrides", nargs="*", help="key=value, e.g. eval_samples=4 val_size=64")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "distill":
            return _distill(args)
        if args.command == "eval" and args.eval_target in (None, "student"):
            return _evaluate(args)
        if args.command == "prune":
            return _prune(args)
        if args.command == "retokenize":
            from actors.models import resolve_path
            from actors.retokenize import retokenized

            done = retokenized(resolve_path(args.model), args.vocab, args.out)
            print(f"wrote {done['out']}: {args.model} on its first {done['vocab_after']} of {done['vocab_before']} token ids")
            return 0
        if args.command == "cluster" and args.cluster == "check":
            from cluster.cluster_yaml import check_cluster_yaml

            prepared = check_cluster_yaml(args.file)
            print(f"{args.file}: valid for `ray up` (node types: {', '.join(prepared['available_node_types'])})")
            return 0
        if args.command == "serve":
            from serve.app import run_local

            run_local(load_config(args.preset, args.overrides))
            return 0
        if args.command == "bench" and args.bench == "train":
            from cluster.bench.train import run_bench as run_train_bench

            print(json.dumps(run_train_bench(args.preset, args.out, args.steps, args.overrides), indent=2))
            return 0
        if args.command == "bench" and args.bench == "quality":
            from cluster.bench.quality import run_bench as run_quality_bench

            methods = [m.strip() for m in args.methods.split(",") if m.strip()]
            unknown = [m for m in methods if m not in METHODS]
            if unknown or not methods:
                raise ConfigError(f"--methods {args.methods!r}: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}")
            result = run_quality_bench(args.preset, methods, args.steps, args.out, args.overrides)
            print(Path(args.out).with_suffix(".md").read_text())
            return 0
        if args.command == "bench" and args.bench == "distill":
            from cluster.bench.distill import run_bench as run_distill_bench

            if args.method not in METHODS:
                raise ConfigError(f"--method {args.method!r}: choose from {', '.join(METHODS)}")
            print(run_distill_bench(args.preset, args.method, args.out, args.vary, args.overrides)["table"])
            return 0
        if args.command == "bench" and args.bench == "gkt":
            from cluster.bench.gkt import run_bench as run_gkt_bench

            result = run_gkt_bench(args.preset, args.out, args.requests, args.overrides, _levels(args.in_flight))
            print(result["table"])
            return 0
        if args.command == "bench" and args.bench == "load" and args.rates is not None:
            from cluster.bench.open_loop import run_open_loop

            result = run_open_loop(args.preset, args.out, _rates(args.rates), args.requests, args.modes.split(","),
                                   args.p99_bound_s, args.overrides, url=args.url, max_tokens=args.max_tokens)
            print(result["table"])
            return 0
        if args.command == "bench" and args.bench == "load":
            from cluster.bench.load import run_bench as run_load_bench

            result = run_load_bench(args.preset, args.out, args.requests, args.concurrency, args.stream, args.overrides,
                                    url=args.url, progress=not args.no_progress)
            print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2))
            return 0
        if args.command == "eval" and args.eval_target == "gkt":
            from cluster.bench.eval_gkt import run_eval

            result = run_eval(args.preset, args.out, args.prompts, args.overrides)
            print(result["table"])
            return 0
        if args.command == "bench" and args.bench == "restart":
            from cluster.bench.restart import run_bench as run_restart_bench

            print(json.dumps(run_restart_bench(args.preset, args.out, args.limit, args.kill_after, args.role, args.overrides), indent=2))
            return 0
        if args.command == "bench" and args.bench == "switch":
            from cluster.bench.switch import run_bench

            result = run_bench(args.preset, args.out, args.prompts, args.overrides)
            print(json.dumps(result, indent=2))
            return 0
    except (ConfigError, FileNotFoundError) as err:
        print(f"studyhall: error: {err}", file=sys.stderr)
        return 2
    return 2


def _train_overrides(args) -> list[str]:
    extra = [f"train.{k}={v}" for k, v in (("method", getattr(args, "method", None)), ("steps", getattr(args, "steps", None)),
                                            ("data", args.data)) if v is not None]
    return [*args.overrides, *extra]


def _distill(args) -> int:
    from train.distill import TrainingFailed, run_distill
    from train.report import headline

    cfg = load_config(args.preset, _train_overrides(args))
    try:
        report = run_distill(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    except TrainingFailed as err:
        print(f"studyhall: {err}", file=sys.stderr)
        return 1
    print(f"{report['method']}: {report['steps']} steps, {report['tokens_per_s']:.0f} train tokens/s; "
          f"{headline(report['before'], report['after'], report['difference'])} (after - before: 95% intervals)")
    warm = report.get("warm_start")
    if warm:
        print(f"from before the {warm['method']} warm start ({warm['steps']} steps): "
              f"{headline(warm['before'], report['after'], warm['from_start'])}")
    looping = [(side or {}).get("greedy", {}).get("looping") for side in (report["before"], report["after"], report["teacher_greedy"])]
    print("greedy answers that loop: " + ", ".join(f"{who} {'-' if v is None else f'{v:.0%}'}"
                                                   for who, v in zip(("before", "after", "teacher"), looping)))
    print(f"report: {report['files']['md']}  student: {report['student_dir']}")
    return 0


def _evaluate(args) -> int:
    from train.evaluate import run_evaluate

    args.overrides = getattr(args, "overrides", [])
    overrides = _train_overrides(args) + ([f"student.path={args.student}"] if args.student else [])
    result = run_evaluate(load_config(args.preset, overrides), args.prompts)
    print(json.dumps(_without_details(result), indent=2))  # the file has them
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def _without_details(result: dict) -> dict:
    """An eval result as printed: no config, and no per-prompt values or answers at any depth."""
    return {k: _without_details(v) if isinstance(v, dict) else v for k, v in result.items()
            if k not in ("config", "per_prompt", "answers")}


def _prune(args) -> int:
    from cluster.prune import run_prune

    record = run_prune(args.model, args.layers, args.out, args.method, args.data, args.samples)
    print(f"kept {len(record['kept_layers'])} of {record['layers_before']} layers by {record['method']}: "
          f"{', '.join(map(str, record['kept_layers']))}")
    print(f"wrote {args.out}: the pruned model, prune.json, prune.png")
    return 0


def _generate(args) -> int:
    from cluster.generate import GenerationFailed, format_summary, generate

    cfg = load_config(args.preset, args.overrides)
    try:
        summary = generate(cfg, args.prompts, args.out, args.limit, progress=not args.no_progress)
    except GenerationFailed as err:
        print(f"studyhall: {err}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    print(f"wrote {summary['sequences']} sequences to {args.out}")
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


def _levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise ConfigError(f"--in-flight {text}: comma-separated whole numbers, e.g. 1,8,32,64") from None


def _rates(text: str) -> list[float]:
    try:
        return [float(r) for r in text.split(",")]
    except ValueError:
        raise ConfigError(f"--rates {text}: comma-separated numbers of requests/s, e.g. 0.5,1,2") from None


if __name__ == "__main__":
    sys.exit(main())
