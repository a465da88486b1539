"""The command line: ``exportcheck <command> ...`` or ``python -m exportcheck <command> ...``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any


def _parse_value(text: str) -> Any:
    """``--set key=value`` values: JSON when it parses (numbers, booleans, lists), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _overrides(pairs: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"--set expects key=value, got {pair!r}")
        overrides[key] = _parse_value(value)
    return overrides


def _add_source(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    parser.add_argument(
        "source",
        nargs="?" if optional else None,
        help="what to build: a transformers model_type (llama, always shrunk to a tiny "
        "config); a hub id whose config ships with exportcheck (arnir0/Tiny-LLM; see "
        "'exportcheck configs'); a config.json file or a model folder holding one "
        "(./my-model); or any other hub id, whose config.json alone is downloaded when "
        "the hub can be reached (not with HF_HUB_OFFLINE=1)",
    )
    parser.add_argument(
        "--shrink",
        action="store_true",
        help="shrink a config from a file, folder or hub id to a tiny one with the rules "
        "of exportcheck.tiny_config (layers, widths, experts; the architecture stays)",
    )
    parser.add_argument(
        "--layers", type=int, default=None, help="number of hidden layers (any source)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a config attribute, repeatable (--set hidden_size=128)",
    )


def _config_overrides(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    overrides = _overrides(args.set, parser)
    if args.layers is not None:
        if args.layers < 1:
            parser.error(f"--layers must be at least 1, got {args.layers}")
        overrides["num_hidden_layers"] = args.layers
    return overrides


def _cmd_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .models import resolve_config

    config = resolve_config(args.source, _config_overrides(args, parser), shrink=args.shrink)
    print(config.to_json_string(use_diff=False))
    return 0


def _cmd_inputs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .tasks import untrained_model

    m = untrained_model(
        args.source, task=args.task, shrink=args.shrink, **_config_overrides(args, parser)
    )
    print(
        f"model: {type(m.model).__name__} ({sum(p.numel() for p in m.model.parameters()):,} parameters)"
    )
    print(f"task: {m.task}")
    print(m.describe())
    return 0


def _cmd_configs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .models import available_configs

    for name in available_configs():
        print(name)
    return 0


def _cmd_validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .tasks import untrained_model
    from .validation import validate

    if args.from_dir is not None:
        return _recheck(args, parser)
    if args.source is None:
        parser.error(
            "validate needs a SOURCE (a model type, a hub id, a file or a folder) or --from DIR"
        )
    overrides = _config_overrides(args, parser)
    source: Any = args.source
    if args.pretrained and (overrides or args.shrink):
        parser.error(
            "--pretrained loads the folder's weights into its own config: drop --shrink, --layers and --set"
        )
    if overrides or args.shrink:
        shrunk = " shrunk" if args.shrink else ""
        print(f"building {args.source}{shrunk} with {overrides}", file=sys.stderr)
        source = untrained_model(args.source, task=args.task, shrink=args.shrink, **overrides)
    begin = time.perf_counter()

    def progress(stage: str) -> None:
        if not args.json:
            print(
                f"[{time.perf_counter() - begin:6.1f} s] {stage} ...", file=sys.stderr, flush=True
            )

    if args.pretrained:
        source = untrained_model(args.source, task=args.task, pretrained=True)
    runtimes = None
    if args.optimize == "ort":
        if args.exporter != "onnx":
            raise SystemExit("--optimize ort fuses the ONNX graph: use it with --exporter onnx.")
        from .runtimes import runtimes_of

        runtimes = [*runtimes_of("onnx"), "onnx_ort"]
    report = validate(
        source,
        exporter=None if runtimes else args.exporter,
        runtimes=runtimes,
        task=args.task,
        atol=1e-4 if args.atol is None else args.atol,
        save_dir=args.save,
        progress=progress,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report.table())
    return 0 if report.ok else 1


def _recheck(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .validation import recheck

    given = [flag for flag, value in (("SOURCE", args.source), ("--save", args.save)) if value]
    if given or args.pretrained or args.shrink or args.set or args.layers is not None:
        parser.error(
            "--from DIR checks the files saved in DIR again: give no SOURCE, --save, "
            "--pretrained or config option with it"
        )
    report = recheck(args.from_dir, atol=args.atol)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report.table())
    return 0 if report.ok else 1


def _cmd_sweep(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .sweep import sweep
    from .tasks import TASKS, get_task

    if args.task == "all":
        if args.only:
            parser.error("--only names model types of one task: give --task TASK with it")
        if args.out.endswith(".jsonl"):
            parser.error(
                f"--task all writes one results file per task under a folder: "
                f"--out {args.out!r} names a file (give a folder, such as docs/status)"
            )
        names = sorted(TASKS, key=lambda n: TASKS[n].rank)
        targets = [(n, os.path.join(args.out, n, "results.jsonl")) for n in names]
    else:
        targets = [(get_task(args.task).name, args.out)]
    for name, out in targets:
        task = get_task(name)
        known = task.model_types()
        sources = args.only or known
        unknown = [s for s in sources if "/" not in s and s not in known]
        if unknown:
            parser.error(
                f"not model types of the {task.name} mapping ({task.mapping}) of this "
                f"transformers: {', '.join(unknown)}"
            )
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        rows = sweep(
            sources,
            out,
            exporter=args.exporter,
            task=task.name,
            workers=args.workers,
            timeout=args.timeout,
            memory_gib=args.memory_gib,
            retry_failed=args.retry_failed,
        )
        ok = sum(1 for r in rows if r.get("ok"))
        print(f"{task.name}: {ok} of {len(rows)} new rows ok; results in {out}")
    return 0


def _cmd_peer(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .peer import TASK, sweep_peer
    from .tasks import get_task

    known = get_task(TASK).model_types()
    unknown = sorted(set(args.only or ()) - set(known))
    if unknown:
        parser.error(
            f"{', '.join(unknown)}: not model types of {TASK} in this transformers "
            "(transformers' MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES lists them)"
        )
    rows = sweep_peer(args.only or known, args.out)
    print(f"{sum(r['ok'] for r in rows)} of {len(rows)} new rows ok; results in {args.out}")
    return 0


def _cmd_report(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .report import summaries_markdown, task_summaries, write_report, write_status

    if os.path.isdir(args.results):
        for path in write_status(args.results):
            print(path)
        print()
        print(summaries_markdown(task_summaries(args.results)))
        return 0
    if not os.path.exists(args.results):
        parser.error(
            f"no results file or folder {args.results!r}; run 'exportcheck sweep --out FILE' "
            "(or '--task all --out FOLDER') first"
        )
    if args.out is None:
        parser.error("--out is required with a results file: the folder for its page")
    written = write_report(args.results, args.out, title=args.title)
    for path in written:
        print(path)
    return 0


def _add_task(
    parser: argparse.ArgumentParser, default: str | None = None, every: bool = False
) -> None:
    from .tasks import TASKS

    parser.add_argument(
        "--task",
        choices=sorted(TASKS, key=lambda n: TASKS[n].rank) + (["all"] if every else []),
        default=default,
        help="the task to build the model for"
        + (
            " (default: the first task whose mapping has the model type)" if default is None else ""
        ),
    )


def _cmd_diff(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .report import verdict_changes
    from .sweep import read_results

    for path in (args.old, args.new):
        if not os.path.exists(path):
            parser.error(f"no results file {path!r}")
    old, new = read_results(args.old), read_results(args.new)
    changes = verdict_changes(old, new)

    def text(v: Any) -> str:
        return (
            "absent"
            if v is None
            else ", ".join(f"{k} {'ok' if g else 'red'}" for k, g in v.items())
        )

    for c in changes:
        print(
            f"{c['source']} ({c['task']}): {text(c['old'])} -> {text(c['new'])}  {c['first_error']}"
        )
    print(
        f"{len(changes)} verdicts changed between {args.old} ({len(old)} rows) and "
        f"{args.new} ({len(new)} rows)"
    )
    return 1 if changes else 0


def build_parser() -> argparse.ArgumentParser:
    from .runtimes import EXPORTERS

    parser = argparse.ArgumentParser(
        prog="exportcheck",
        description="Export transformers models with torch.export and ONNX, checked.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("configs", help="list the hub ids whose config ships here")
    p.set_defaults(run=_cmd_configs)

    p = commands.add_parser("config", help="print the config of a hub id or model_type")
    _add_source(p)
    p.set_defaults(run=_cmd_config)

    p = commands.add_parser(
        "inputs", help="print the inputs and dynamic shapes of an untrained model"
    )
    _add_source(p)
    _add_task(p)
    p.set_defaults(run=_cmd_inputs)

    p = commands.add_parser(
        "validate", help="export one model and compare with eager on unseen shapes"
    )
    _add_source(p, optional=True)
    _add_task(p)
    p.add_argument(
        "--exporter",
        choices=list(EXPORTERS),
        default="onnx",
        help="what to validate: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in EXPORTERS.items()),
    )
    p.add_argument(
        "--atol",
        type=float,
        default=None,
        help="max abs diff counted as correct (1e-4; with --from, the saved validation's)",
    )
    p.add_argument(
        "--optimize",
        choices=["ort"],
        default=None,
        help="ort: also validate the ONNX graph fused for onnxruntime (attention, rotary, "
        "skip layer norm, ... as onnxruntime's contrib operators), beside the plain one",
    )
    p.add_argument(
        "--save",
        metavar="DIR",
        help="keep the exported programs (.pt2), ONNX models, input sets with eager's "
        "outputs, the report and a README in DIR",
    )
    p.add_argument(
        "--from",
        dest="from_dir",
        metavar="DIR",
        help="check the files a --save wrote in DIR again (no model, no export)",
    )
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="load the weights of the model folder SOURCE (what save_pretrained writes) "
        "instead of random ones",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=_cmd_validate)

    p = commands.add_parser(
        "sweep", help="validate every model type of a task's mapping, one process each"
    )
    _add_task(p, default="text-generation", every=True)
    p.add_argument(
        "--out",
        required=True,
        help="JSONL results file, appended to (resumable); with --task all, a folder that "
        "gets <task>/results.jsonl",
    )
    p.add_argument("--only", nargs="+", help="model types or hub ids to run instead of all")
    p.add_argument("--exporter", choices=list(EXPORTERS), default="onnx")
    p.add_argument("--workers", type=int, default=1, help="models validated at once")
    p.add_argument("--timeout", type=float, default=600, help="seconds per model")
    p.add_argument("--memory-gib", type=float, default=8, help="memory cap per model process")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="rerun the model types whose row says the process crashed, was killed, "
        "timed out or ran out of memory",
    )
    p.set_defaults(run=_cmd_sweep)

    p = commands.add_parser(
        "peer",
        help="transformers' own exporters on the vision encoders of the image-text-to-text "
        "models, run on the image sets exportcheck checks (a side-by-side section of the "
        "task's status page)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="JSONL results file; rows already in it are kept and their model types skipped "
        "(docs/status/image-text-to-text/peer.jsonl for the status page)",
    )
    p.add_argument(
        "--only", nargs="+", metavar="MODEL_TYPE", help="these model types only (default: all)"
    )
    p.set_defaults(run=_cmd_peer)

    p = commands.add_parser("report", help="render sweep results as the docs status pages")
    p.add_argument(
        "results",
        help="JSONL file written by sweep, or a folder of <task>/results.jsonl (sweep "
        "--task all): each task's page is written next to its results, and an overview",
    )
    p.add_argument("--out", help="with a results file: the folder for its page and plots")
    p.add_argument("--title", default=None, help="the page title (default: the task's)")
    p.set_defaults(run=_cmd_report)

    p = commands.add_parser(
        "diff", help="compare the verdicts of two results files (exit status 1 if any changed)"
    )
    p.add_argument("old", help="the earlier results file")
    p.add_argument("new", help="the later results file")
    p.set_defaults(run=_cmd_diff)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``exportcheck`` command.

    Nothing is downloaded except the ``config.json`` of a hub id that does not ship
    with exportcheck; ``HF_HUB_OFFLINE=1`` keeps even that local.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args, parser)
    except (ValueError, TypeError) as e:
        if not _raised_by_exportcheck(e):
            raise
        # Bad input caught by exportcheck's own checks: the message says what was
        # wrong and what to do, a traceback would add nothing.
        print(f"exportcheck {args.command}: {e}", file=sys.stderr)
        return 2


def _raised_by_exportcheck(error: BaseException) -> bool:
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    package = os.path.dirname(os.path.abspath(__file__))
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(package)


if __name__ == "__main__":
    sys.exit(main())
