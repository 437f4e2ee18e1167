"""The `studyhall` command line. User mistakes end as one line on stderr, never a traceback."""
import argparse
import json
import sys



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

    # `studyhall eval` alone evaluates a student (train/); `studyhall eval gkt` the GKT trade-off (serve/).
    ev = sub.add_parser("eval", help="evaluate a student, or (eval gkt) the GKT guidance trade-off")
    eval_sub = ev.add_subparsers(dest="eval_target", required=False)  # noqa: F841 (serve adds "gkt")
    cl = sub.add_parser("cluster", help="Ray cluster launcher configs")
    cluster_sub = cl.add_subparsers(dest="cluster", required=True)
    check = cluster_sub.add_parser("check", help="validate a `ray up` YAML offline, with Ray's own schema check")
    check.add_argument("file")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from cluster.config import ConfigError

    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "cluster" and args.cluster == "check":
            from cluster.cluster_yaml import check_cluster_yaml

            prepared = check_cluster_yaml(args.file)
            print(f"{args.file}: valid for `ray up` (node types: {', '.join(prepared['available_node_types'])})")
            return 0
        if args.command == "bench" and args.bench == "switch":
            from cluster.bench_switch import run_bench

            result = run_bench(args.preset, args.out, args.prompts, args.overrides)
            print(json.dumps(result, indent=2))
            return 0
    except (ConfigError, FileNotFoundError) as err:
        print(f"studyhall: error: {err}", file=sys.stderr)
        return 2
    return 2


def _generate(args) -> int:
    from cluster.config import load_config
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


if __name__ == "__main__":
    sys.exit(main())
