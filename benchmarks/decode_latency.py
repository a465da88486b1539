"""Decode and prefill latency of one model, five ways, side by side in one run.

The ways, all on the same weights (random, float32) and the same inputs:

- ``eager``: PyTorch, ``model(...)`` under ``torch.no_grad``;
- ``plain``: exportcheck's ONNX (``torch.export`` with dynamic shapes, then
  ``torch.onnx.export``), in onnxruntime;
- ``fused``: the same graph rewritten by :func:`exportcheck.runtimes.onnx_ort.fuse_for_ort`,
  its rotary tables stored for ``max_position_embeddings`` positions (``rotary_rows``),
  the length the model builder's graph serves too (its ``context_length``);
- ``hf``: ``transformers.exporters``' ``OnnxExporter`` (dynamic), in onnxruntime;
- ``builder``: the onnxruntime-genai model builder's ONNX (``-p fp32 -e cpu``) of the same
  folder, in onnxruntime.

The model folder is written once: the shipped config, random float32 weights
(``save_pretrained``) and a small word-level tokenizer built offline with ``tokenizers``
so that the model builder can read the folder. Each way is converted in its own process
and measured in its own process, under ``/usr/bin/time -v`` (peak resident memory); the
ways alternate over the repeats, and every process uses the same thread count.

Before timing, every way computes the logits of one input set (batch 2, 16 cached
tokens, one new token); the table gives each way's max abs diff to eager, so that a fast
wrong graph cannot win. A decode step is timed with a cache of ``L`` tokens (the cache is
random, as after a prefill of ``L`` tokens; the mask is all ones); a prefill with an
empty cache. The bandwidth floor of a decode step is (the bytes of the weights, tied ones
once, plus the bytes of the cache read) / (the read bandwidth), measured in the same run
by summing a 1 GiB tensor with the same thread count.

    python benchmarks/decode_latency.py HuggingFaceTB/SmolLM2-135M --repeat 3
    python benchmarks/decode_latency.py meta-llama/Llama-3.2-1B --repeat 1 --prefill 128

With ``--interleave``, every way is loaded in its own process at once (under
``/usr/bin/time -v``) and the driver alternates single timed calls between them, the
order rotating from one round to the next, ``--runs`` rounds per shape: each way meets the
machine's slow and fast moments alike, where one process after another can each land in
one. The table then also gives the quartiles of each round's fused / builder ratio. All
ways are in memory together: for a large model, list fewer ``--ways``. The ways are loaded
afresh ``--blocks`` times (2 by default), in the order given and then reversed, the rounds
shared among the loads: the way loaded first ran slower on this machine (SmolLM2-135M's
fused / builder 1.04 and 1.06 in loads where the fused graph went first, 0.98 and 1.00
where the builder's did), and a way always loaded first would carry that. What still moves from one such run to the next shows when several are
set side by side: ``benchmarks/interleaved_summary.py``.

    python benchmarks/decode_latency.py HuggingFaceTB/SmolLM2-135M --interleave --runs 20

Writes the table (markdown) to stdout and everything measured to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

WAYS = ("eager", "plain", "fused", "hf", "builder")
TITLES = {
    "eager": "eager",
    "plain": "exportcheck ONNX",
    "fused": "exportcheck ONNX fused",
    "hf": "transformers.exporters ONNX",
    "builder": "model builder ONNX",
}


# ----------------------------------------------------------------- the model folder


def prepare(source: str, folder: str, layers: int | None) -> None:
    """The shipped config with random float32 weights and a word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from exportcheck import get_config

    config = get_config(source)
    config.dtype = torch.float32
    if layers:
        config.num_hidden_layers = layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.save_pretrained(folder)
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(253)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(folder)


# ----------------------------------------------------------------- conversions


def _exportcheck_model(folder: str):
    from exportcheck import untrained_model

    return untrained_model(folder, pretrained=True)


def convert(way: str, folder: str) -> str:
    """Write the way's ONNX model under ``folder/way``; returns its path."""
    import copy

    import torch

    out = os.path.join(folder, way)
    os.makedirs(out, exist_ok=True)
    if way in ("plain", "fused"):
        from exportcheck import export_patches

        plain = os.path.join(folder, "plain", "model.onnx")
        if way == "fused":
            from exportcheck.runtimes.onnx_ort import fuse_for_ort

            if not os.path.exists(plain):  # the fused graph is the plain one rewritten
                convert("plain", folder)
            path = os.path.join(out, "model.onnx")
            rows = _config(folder).max_position_embeddings
            print(json.dumps({"fusions": fuse_for_ort(plain, path, rotary_rows=rows)}))
            return path
        m = _exportcheck_model(folder)
        with export_patches(m.model), torch.no_grad():
            ep = torch.export.export(
                m.model, (), kwargs=copy.deepcopy(m.inputs), dynamic_shapes=m.dynamic_shapes
            )
            torch.onnx.export(ep, (), plain, kwargs=copy.deepcopy(m.inputs), dynamo=True)
        return plain
    if way == "hf":
        from transformers.exporters.configs import OnnxConfig
        from transformers.exporters.exporter_onnx import OnnxExporter

        m = _exportcheck_model(folder)
        exported = OnnxExporter().export(m.model, copy.deepcopy(m.inputs), OnnxConfig(dynamic=True))
        exported.save_pretrained(out)
        return next(os.path.join(out, f) for f in sorted(os.listdir(out)) if f.endswith(".onnx"))
    if way == "builder":
        cache = os.path.join(folder, "builder_cache")
        cmd = [
            sys.executable, "-m", "onnxruntime_genai.models.builder",
            "-i", folder, "-o", out, "-p", "fp32", "-e", "cpu", "-c", cache,
        ]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        return os.path.join(out, "model.onnx")
    raise ValueError(f"no conversion for {way!r}")


# ----------------------------------------------------------------- inputs


def _config(folder: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)


def _case(config, batch: int, past: int, new: int, seed: int) -> dict:
    """input ids, mask and a random cache as numpy arrays, the same for every way."""
    import numpy as np

    rng = np.random.default_rng(seed)
    heads = config.num_key_value_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    shape = (batch, heads, past, dim)
    return {
        "input_ids": rng.integers(3, config.vocab_size, size=(batch, new), dtype=np.int64),
        "attention_mask": np.ones((batch, past + new), dtype=np.int64),
        "past": [
            (
                rng.standard_normal(shape, dtype=np.float32),
                rng.standard_normal(shape, dtype=np.float32),
            )
            for _ in range(config.num_hidden_layers)
        ],
    }


def _torch_inputs(case: dict) -> dict:
    import torch

    from exportcheck import make_dynamic_cache

    return {
        "input_ids": torch.from_numpy(case["input_ids"]),
        "attention_mask": torch.from_numpy(case["attention_mask"]),
        "cache": make_dynamic_cache(
            [(torch.from_numpy(k), torch.from_numpy(v)) for k, v in case["past"]]
        ),
    }


def _builder_feeds(session, case: dict) -> dict:
    """The model builder's inputs by name: ``past_key_values.{i}.key/value``, and
    ``position_ids`` when the graph takes them."""
    import numpy as np

    feeds = {"input_ids": case["input_ids"], "attention_mask": case["attention_mask"]}
    for i, (k, v) in enumerate(case["past"]):
        feeds[f"past_key_values.{i}.key"] = k
        feeds[f"past_key_values.{i}.value"] = v
    names = [i.name for i in session.get_inputs()]
    if "position_ids" in names:
        past = case["past"][0][0].shape[2]
        new = case["input_ids"].shape[1]
        row = np.arange(past, past + new, dtype=np.int64)
        feeds["position_ids"] = np.broadcast_to(row, case["input_ids"].shape).copy()
    missing = set(names) - set(feeds)
    if missing:
        raise ValueError(
            f"the model builder's graph takes inputs this benchmark does not feed: {missing}"
        )
    return {n: feeds[n] for n in names}


def _hf_feeds(session, case: dict) -> dict:
    """transformers.exporters' inputs by name: ``input.cache.layers.{i}.keys/values``."""
    feeds = {"input_ids": case["input_ids"], "attention_mask": case["attention_mask"]}
    for i, (k, v) in enumerate(case["past"]):
        feeds[f"input.cache.layers.{i}.keys"] = k
        feeds[f"input.cache.layers.{i}.values"] = v
    names = [i.name for i in session.get_inputs()]
    missing = set(names) - set(feeds)
    if missing:
        raise ValueError(f"transformers.exporters' graph takes inputs not fed here: {missing}")
    return {n: feeds[n] for n in names}


class _Runner:
    """One way, loaded once: ``logits(case)`` returns the last position's logits."""

    def __init__(self, way: str, folder: str, threads: int):
        self.way = way
        if way == "eager":
            import torch
            from transformers import AutoModelForCausalLM

            torch.set_num_threads(threads)
            self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            return
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        path = {
            "plain": os.path.join(folder, "plain", "model.onnx"),
            "fused": os.path.join(folder, "fused", "model.onnx"),
            "builder": os.path.join(folder, "builder", "model.onnx"),
        }.get(way) or next(
            os.path.join(folder, "hf", f)
            for f in sorted(os.listdir(os.path.join(folder, "hf")))
            if f.endswith(".onnx")
        )
        self.session = onnxruntime.InferenceSession(
            path, options, providers=["CPUExecutionProvider"]
        )
        self.names = [o.name for o in self.session.get_outputs()]

    def prepared(self, case: dict):
        """What one timed call takes, built outside the timing."""
        if self.way == "eager":
            return _torch_inputs(case)
        if self.way == "builder":
            return _builder_feeds(self.session, case)
        if self.way == "hf":
            return _hf_feeds(self.session, case)
        from exportcheck import ort_feeds

        return ort_feeds(self.session, _torch_inputs(case))

    def call(self, prepared):
        if self.way == "eager":
            import torch

            with torch.no_grad():
                return self.model(**prepared).logits.numpy()
        logits = self.names.index("logits") if "logits" in self.names else 0
        return self.session.run(None, prepared)[logits]


# ----------------------------------------------------------------- one process, one way


def measure(way: str, folder: str, shapes: list, threads: int, runs: int) -> dict:

    config = _config(folder)
    begin = time.perf_counter()
    runner = _Runner(way, folder, threads)
    load = time.perf_counter() - begin
    check(runner, folder, config)
    result = {"way": way, "load_s": load, "times": {}}
    for kind, batch, length in shapes:
        past, new = (length, 1) if kind == "decode" else (0, length)
        case = _case(config, batch, past, new, seed=2)
        times = []
        for i in range(runs + 1):  # the first call warms up
            prepared = runner.prepared(case)
            begin = time.perf_counter()
            runner.call(prepared)
            if i:
                times.append(time.perf_counter() - begin)
        result["times"][f"{kind} b{batch} L{length}"] = statistics.median(times)
    return result


#: the check sets: batch 2, 16 cached tokens, 1 new; the padded one's first row has its
#: first PADDING cached tokens masked, as a left-padded prompt leaves them
CHECK, PADDING = (2, 16, 1), 5


def _padded_case(config) -> dict:

    batch, past, new = CHECK
    case = _case(config, batch, past, new, seed=1)
    case["attention_mask"] = case["attention_mask"].copy()
    case["attention_mask"][0, :PADDING] = 0
    return case


def _first(cache):
    """``cache`` (batch, heads, length, dim) with row 0's unpadded tokens moved first."""
    import numpy as np

    moved = cache.copy()
    moved[0] = np.concatenate([cache[0, :, PADDING:], cache[0, :, :PADDING]], 1)
    return moved


def check(runner: _Runner, folder: str, config) -> None:
    """The way's logits (last position) on the check sets, saved for the driver to compare:
    ``check_{way}.npy`` (every token unpadded) and ``check_padded_{way}.npy``. Eager also
    gives the padded set with the positions ``generate`` counts from the mask
    (``check_padded_eager_mask.npy``): a graph may number a left-padded row's new token
    from the cache's length (as eager does when given no positions) or from its mask."""
    import numpy as np

    batch, past, new = CHECK
    padded = _padded_case(config)
    # the same row with its cached tokens first and the padding after them: how a runtime
    # that keeps each row's tokens contiguous from the start lays that cache out
    moved = dict(padded, past=[(_first(k), _first(v)) for k, v in padded["past"]])
    sets = {
        "check": _case(config, batch, past, new, seed=1),
        "check_padded": padded,
        "check_moved": moved,
    }
    for name, case in sets.items():
        logits = np.asarray(runner.call(runner.prepared(case)))[:, -1, :]
        np.save(os.path.join(folder, f"{name}_{runner.way}.npy"), logits)
    if runner.way == "eager":
        import torch

        given = _torch_inputs(sets["check_padded"])
        mask = given["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -new:]
        with torch.no_grad():
            logits = runner.model(**given, position_ids=positions).logits[:, -1].numpy()
        np.save(os.path.join(folder, "check_padded_eager_mask.npy"), logits)


def check_diffs(folder: str, ways: list[str]) -> dict:
    """Each way's max abs diff of the logits to eager's on the check sets: unpadded, and
    left-padded against eager with the new token numbered from the cache's length and
    from the mask (a graph that keeps the padded row right matches one of the two)."""
    import numpy as np

    def load(name: str):
        return np.load(os.path.join(folder, f"{name}.npy"))

    def diff(a, b) -> float:
        return float(np.abs(a - b).max())

    return {
        way: {
            "unpadded": diff(load(f"check_{way}"), load("check_eager")),
            "padded_cache_positions": diff(load(f"check_padded_{way}"), load("check_padded_eager")),
            "padded_mask_positions": diff(
                load(f"check_padded_{way}"), load("check_padded_eager_mask")
            ),
            # the padded row's tokens moved first, against the padded row's own logits
            "moved_mask_positions": diff(
                load(f"check_moved_{way}"), load("check_padded_eager_mask")
            ),
        }
        for way in ways
        if way != "eager"
    }


def bandwidth(threads: int) -> float:
    """Read bandwidth in bytes/s: the best of 7 sums over a 1 GiB float32 tensor."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(2**28, dtype=torch.float32)
    x.sum()
    best = min(_timed(x.sum) for _ in range(7))
    return x.numel() * 4 / best


def _timed(fn) -> float:
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def weight_bytes(folder: str) -> int:
    """Bytes of the saved parameters (float32): ``save_pretrained`` writes a tied
    embedding once."""
    from safetensors import safe_open

    total = 0
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(folder, name), "np") as f:
                for key in f.keys():  # noqa: SIM118 (a safetensors file is not iterable)
                    n = 1
                    for d in f.get_slice(key).get_shape():
                        n *= d
                    total += 4 * n
    return total


# ----------------------------------------------------------------- the driver


def serve(way: str, folder: str, threads: int) -> None:
    """A child of ``--interleave``: load the way, check it, say ``ready``, then time one
    call per shape read from stdin (``[kind, batch, length]``, one JSON line each) and
    print its seconds; the inputs are built anew before each call, outside the timing."""
    config = _config(folder)
    runner = _Runner(way, folder, threads)
    check(runner, folder, config)
    print("ready", flush=True)
    cases: dict = {}
    for line in sys.stdin:
        kind, batch, length = json.loads(line)
        if (kind, batch, length) not in cases:
            cases.clear()  # one shape at a time: the driver goes through them in order
            past, new = (length, 1) if kind == "decode" else (0, length)
            cases[kind, batch, length] = _case(config, batch, past, new, seed=2)
        prepared = runner.prepared(cases[kind, batch, length])
        begin = time.perf_counter()
        runner.call(prepared)
        print(json.dumps(time.perf_counter() - begin), flush=True)


def load_orders(ways: list[str], blocks: int) -> list[list[str]]:
    """The order the ways are loaded in, block by block: as given, then reversed, in turn.
    The way loaded first ran slower on this machine, so no way may always be loaded first;
    over an even number of blocks every way's mean place in the loading order is the same."""
    return [list(ways) if b % 2 == 0 else list(reversed(ways)) for b in range(blocks)]


def block_rounds(runs: int, blocks: int) -> list[int]:
    """The rounds of each block: ``runs`` shared as evenly as possible."""
    return [runs // blocks + (1 if b < runs % blocks else 0) for b in range(blocks)]


def _interleaved_block(args, folder: str, shapes: list, order: list[str], runs: int):
    """One block of ``--interleave``: the ways loaded in ``order``, each in its own
    process, then ``runs`` rounds per shape; ``({shape: {way: [seconds]}}, {way: peak kB})``."""
    procs, logs = {}, {}
    with contextlib.ExitStack() as stack:
        try:
            for way in order:
                logs[way] = stack.enter_context(tempfile.TemporaryFile(mode="w+"))
                cmd = [
                    "/usr/bin/time", "-v", sys.executable, __file__, args.source,
                    "--threads", str(args.threads), "--_do", "serve", folder, way,
                ]  # fmt: skip
                procs[way] = subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logs[way], text=True
                )
                if procs[way].stdout.readline().strip() != "ready":  # loaded and checked
                    logs[way].seek(0)
                    sys.stderr.write(logs[way].read()[-4000:])
                    raise RuntimeError(f"{way} did not load: its process's log is above")

            def call(way: str, shape) -> float:
                procs[way].stdin.write(json.dumps(shape) + "\n")
                procs[way].stdin.flush()
                seconds = float(procs[way].stdout.readline())
                time.sleep(0.05)  # the idle threads of the process that ran stop spinning
                return seconds

            rounds: dict = {}
            for kind, batch, length in shapes:
                key = f"{kind} b{batch} L{length}"
                for way in order:  # the first call of a shape warms up
                    call(way, [kind, batch, length])
                times: dict = {w: [] for w in args.ways}
                for r in range(runs):
                    for way in order[r % len(order) :] + order[: r % len(order)]:
                        times[way].append(call(way, [kind, batch, length]))
                rounds[key] = times
                print(
                    f"{key} (loaded {', '.join(order)}): "
                    + ", ".join(
                        f"{w} {1e3 * statistics.median(t):.1f} ms" for w, t in times.items()
                    ),
                    file=sys.stderr,
                )
        finally:
            for proc in procs.values():
                if proc.stdin:
                    proc.stdin.close()
            for proc in procs.values():
                proc.wait()
        peaks = {}
        for way in order:
            logs[way].seek(0)
            log = logs[way].read()
            peaks[way] = int(
                re.search(r"Maximum resident set size \(kbytes\): (\d+)", log).group(1)
            )
        return rounds, peaks


def interleaved(args, folder: str, shapes: list) -> dict:
    """Every way in its own process at once, single calls alternating (``--interleave``),
    in ``--blocks`` blocks whose loading order alternates (:func:`load_orders`):
    ``{"runs": [...], "rounds": {shape: {way: [seconds, ...]}}, "load_orders": [...]}``;
    a shape's rounds are those of every block, in turn, so that the i-th calls of two ways
    were made close in time."""
    orders = load_orders(args.ways, args.blocks)
    rounds: dict = {}
    peaks: dict = {}
    for order, runs in zip(orders, block_rounds(args.runs, args.blocks), strict=True):
        if runs == 0:
            continue
        block, block_peaks = _interleaved_block(args, folder, shapes, order, runs)
        for key, times in block.items():
            for way, seconds in times.items():
                rounds.setdefault(key, {w: [] for w in args.ways})[way].extend(seconds)
        for way, kb in block_peaks.items():
            peaks[way] = max(kb, peaks.get(way, 0))
    runs = [
        {
            "way": way,
            "repeat": 0,
            "times": {key: statistics.median(t[way]) for key, t in rounds.items()},
            "peak_kb": peaks[way],
        }
        for way in args.ways
    ]
    return {
        "runs": runs,
        "rounds": rounds,
        "load_orders": orders,
        "block_rounds": block_rounds(args.runs, args.blocks),
    }


def _timed_process(source: str, args: list[str]) -> tuple[str, int]:
    """Runs ``this script source args`` under /usr/bin/time -v: (stdout, peak RSS in kB)."""
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, source, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"{' '.join(args[-4:-1])} failed with exit status {proc.returncode}")
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return proc.stdout, peak


def _shapes(batches: list[int], caches: list[int], prefills: list[int]) -> list:
    decode = [("decode", b, c) for b in batches for c in caches]
    return decode + [("prefill", 1, p) for p in prefills]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a hub id whose config ships with exportcheck")
    parser.add_argument("--folder", help="model folder (kept); a temporary one by default")
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS)
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 4])
    parser.add_argument(
        "--cache",
        nargs="*",
        type=int,
        default=[128, 512, 2048],
        help="cached tokens (none: no decode)",
    )
    parser.add_argument(
        "--prefill",
        nargs="*",
        type=int,
        default=[128, 512],
        help="prompt tokens (none: no prefill)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--runs", type=int, default=5, help="timed calls per shape (median)")
    parser.add_argument("--repeat", type=int, default=3, help="processes per way, alternating")
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="load every way in its own process at once and alternate single calls "
        "between them, --runs rounds per shape (--repeat is not used)",
    )
    parser.add_argument(
        "--blocks",
        type=int,
        default=2,
        help="with --interleave: load the ways afresh this many times, in the order given "
        "and reversed in turn, the rounds shared among the loads (an even number puts "
        "every way equally often early in the loading order)",
    )
    parser.add_argument("--layers", type=int, help="fewer layers (a quick trial)")
    parser.add_argument("--out", help="write everything measured here (JSON)")
    parser.add_argument(
        "--convert-only",
        action="store_true",
        help="prepare --folder and convert, measure nothing (a later run on the same "
        "folder measures without converting again)",
    )
    parser.add_argument(
        "--check-only",
        action="store_true",
        help="prepare --folder, convert, and compare every way's logits with eager's on the "
        "check sets (one unpadded, one with a left-padded row), timing nothing",
    )
    parser.add_argument("--plot", help="also draw the table as a bar chart (PNG) here")
    parser.add_argument(
        "--from", dest="saved", help="render the JSON an earlier run wrote with --out"
    )
    parser.add_argument("--_do", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._do:  # a child process: one step of the driver
        step, folder, *rest = args._do
        if step == "convert":
            print(json.dumps({"path": convert(rest[0], folder)}))
        elif step == "measure":
            shapes = json.loads(rest[1])
            print(json.dumps(measure(rest[0], folder, shapes, args.threads, args.runs)))
        elif step == "check":
            check(_Runner(rest[0], folder, args.threads), folder, _config(folder))
        elif step == "serve":
            serve(rest[0], folder, args.threads)
        elif step == "bandwidth":
            print(json.dumps({"bandwidth": bandwidth(args.threads)}))
        return

    if args.saved:
        with open(args.saved) as f:
            report = json.load(f)
        print(render(report))
        if args.plot:
            plot(report, args.plot)
        return
    if args.convert_only and not args.folder:
        parser.error("--convert-only keeps its conversions in --folder: give one.")
    if args.check_only and "eager" not in args.ways:
        parser.error("--check-only compares the ways with eager: list eager among --ways.")
    if not args.cache and not args.prefill and not (args.saved or args.convert_only):
        parser.error("--cache and --prefill are both empty: nothing to measure.")
    if args.interleave and not 1 <= args.blocks <= args.runs:
        parser.error(
            f"--blocks {args.blocks} with --runs {args.runs}: every load needs a round of its "
            "own; give --blocks between 1 and --runs."
        )
    tmp = None if args.folder else tempfile.TemporaryDirectory(prefix="decode-latency-")
    folder = args.folder or tmp.name
    try:
        report = run(args, folder)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if args.convert_only:
        print(json.dumps(report["convert"], indent=1))
        return
    if args.check_only:
        print(render(report))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)
        return
    print(render(report))
    if args.plot:
        plot(report, args.plot)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


def run(args, folder: str) -> dict:
    if not os.path.exists(os.path.join(folder, "config.json")):
        prepare(args.source, folder, args.layers)
    shapes = _shapes(args.batch, args.cache, args.prefill)
    report = {
        "source": args.source,
        "layers": args.layers,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "weight_bytes": weight_bytes(folder),
        "convert": {},
        "runs": [],
    }
    done_path = os.path.join(folder, "converted.json")
    done = {}
    if os.path.exists(done_path):
        with open(done_path) as f:
            done = json.load(f)
    for way in args.ways:
        if way == "eager":
            continue
        if way in done:  # converted by an earlier run on the same folder
            report["convert"][way] = done[way]
            continue
        begin = time.perf_counter()
        out, peak = _timed_process(args.source, ["--_do", "convert", folder, way])
        info = {}  # the child prints one JSON object per line (the fusions, the path)
        for line in out.strip().splitlines():
            if line.startswith("{"):
                info.update(json.loads(line))
        info.update(seconds=time.perf_counter() - begin, peak_kb=peak)
        report["convert"][way] = done[way] = info
        with open(done_path, "w") as f:
            json.dump(done, f)
        print(f"converted {way} in {info['seconds']:.0f} s", file=sys.stderr)
    if args.convert_only:
        return report
    if args.check_only:
        for way in args.ways:
            _timed_process(
                args.source, ["--threads", str(args.threads), "--_do", "check", folder, way]
            )
        report["checks"] = check_diffs(folder, args.ways)
        return report
    common = ["--threads", str(args.threads), "--runs", str(args.runs)]
    bandwidths = []
    if args.interleave:  # the probe before and after the rounds
        out, _ = _timed_process(args.source, [*common, "--_do", "bandwidth", folder])
        bandwidths.append(json.loads(out)["bandwidth"])
        report.update(
            interleaved(args, folder, shapes), interleaved_rounds=args.runs, blocks=args.blocks
        )
        out, _ = _timed_process(args.source, [*common, "--_do", "bandwidth", folder])
        bandwidths.append(json.loads(out)["bandwidth"])
    for r in range(0 if args.interleave else args.repeat):
        order = args.ways[r % len(args.ways) :] + args.ways[: r % len(args.ways)]
        out, _ = _timed_process(args.source, [*common, "--_do", "bandwidth", folder])
        bandwidths.append(json.loads(out)["bandwidth"])
        for way in order:
            out, peak = _timed_process(
                args.source, [*common, "--_do", "measure", folder, way, json.dumps(shapes)]
            )
            row = json.loads(out.strip().splitlines()[-1])
            row.update(peak_kb=peak, repeat=r)
            report["runs"].append(row)
            print(f"repeat {r} {way}: {row['times']}", file=sys.stderr)

    if "eager" in args.ways:  # every way's logits of the check sets against eager's
        report["checks"] = check_diffs(folder, args.ways)
        report["check_max_abs_diff"] = {w: c["unpadded"] for w, c in report["checks"].items()}
    report["bandwidth"] = max(bandwidths)
    report["bandwidths"] = bandwidths
    report["shapes"] = shapes
    report["kv_bytes_per_token"] = _kv_bytes_per_token(folder)
    return report


def _kv_bytes_per_token(folder: str) -> int:
    config = _config(folder)
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * dim * 4


def render_checks(checks: dict) -> str:
    """The check sets' table: each way's max abs diff of the logits to eager's."""
    batch, past, new = CHECK
    lines = [
        f"max abs diff of the last logits to eager (batch {batch}, {past} cached, {new} new; "
        f"padded: row 0's first {PADDING} cached tokens masked, the new token numbered from "
        "the cache's length, as eager given no positions, or from the mask, as generate "
        "does; moved: the same row with its cached tokens first and its padding after, "
        "compared with the padded row's logits)",
        "",
        "| way | unpadded | padded, positions from the cache | padded, positions from the "
        "mask | padded row's cached tokens moved first, positions from the mask |",
        "|---|---|---|---|---|",
    ]
    for way, c in checks.items():
        lines.append(
            f"| {TITLES[way]} | {c['unpadded']:.1e} | {c['padded_cache_positions']:.1e} "
            f"| {c['padded_mask_positions']:.1e} | {c['moved_mask_positions']:.1e} |"
        )
    return "\n".join(lines)


def render(report: dict) -> str:
    """The markdown table: per shape, each way's median time and its ratios; for a
    ``--check-only`` run, the check sets' table alone."""
    if not report.get("runs"):
        return (
            f"{report['source']}, float32, {report['machine']}, {report['date']}\n\n"
            + render_checks(report["checks"])
        )

    ways = list(dict.fromkeys(r["way"] for r in report["runs"]))
    lines = [
        f"{report['source']}"
        + (f" ({report['layers']} layers)" if report.get("layers") else "")
        + f", float32, {report['threads']} threads, {report['machine']}, {report['date']}; "
        f"read bandwidth {report['bandwidth'] / 1e9:.1f} GB/s, weights "
        f"{report['weight_bytes'] / 1e6:.0f} MB"
        + (
            f"; interleaved: every way loaded at once, single calls alternating, "
            f"{report['interleaved_rounds']} rounds per shape"
            + (
                "; loaded " + " then ".join(f"({', '.join(o)})" for o in report["load_orders"])
                if report.get("load_orders")
                else ""
            )
            if report.get("interleaved_rounds")
            else ""
        ),
        "",
    ]
    if report.get("check_max_abs_diff"):
        diffs = ", ".join(f"{TITLES[w]} {d:.1e}" for w, d in report["check_max_abs_diff"].items())
        lines += [f"max abs diff of the logits to eager (batch 2, 16 cached, 1 new): {diffs}", ""]
    if report.get("checks"):  # runs since the padded check set was added
        lines += [render_checks(report["checks"]), ""]
    medians = _medians(report)
    header = ["shape", *(f"{TITLES[w]} ms" for w in ways)]
    if "builder" in ways:
        header += [f"{TITLES[w]} / builder" for w in ways if w != "builder"]
    if "fused" in ways and "eager" in ways:
        header.append("fused / eager")
    header += ["floor ms", "fused / floor" if "fused" in ways else "best / floor"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for kind, batch, length in report["shapes"]:
        key = f"{kind} b{batch} L{length}"
        ms = {w: 1e3 * t for w, t in medians[key].items()}
        cells = [key, *(f"{ms[w]:.1f}" for w in ways)]
        if "builder" in ways:
            cells += [f"{ms[w] / ms['builder']:.2f}" for w in ways if w != "builder"]
        if "fused" in ways and "eager" in ways:
            cells.append(f"{ms['fused'] / ms['eager']:.2f}")
        if kind == "decode":
            read = report["weight_bytes"] + batch * length * report["kv_bytes_per_token"]
            floor = 1e3 * read / report["bandwidth"]
            best = ms["fused"] if "fused" in ms else min(ms.values())
            cells += [f"{floor:.1f}", f"{best / floor:.2f}"]
        else:
            cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    spread = _repeat_ratios(report, "fused", "builder")
    quartiles = _round_ratios(report, "fused", "builder")
    if quartiles:
        lines += [
            "",
            f"{TITLES['fused']} / builder in each round (lower quartile, median, upper "
            "quartile): "
            + ", ".join(
                f"{key} {q[0]:.3f}, {q[1]:.3f}, {q[2]:.3f}" for key, q in quartiles.items()
            ),
        ]
        by_load = _load_ratios(report, "fused", "builder")
        if by_load:
            lines.append(
                f"{TITLES['fused']} / builder, median round of each load: "
                + ", ".join(
                    f"{key} " + ", ".join(f"{m:.3f}" for m in medians)
                    for key, medians in by_load.items()
                )
            )
    elif spread:
        repeats = len({r["repeat"] for r in report["runs"]})
        lines += [
            "",
            f"{TITLES['fused']} / builder within each of the {repeats} repeats (lowest to "
            "highest): "
            + ", ".join(f"{key} {low:.2f} to {high:.2f}" for key, (low, high) in spread.items()),
        ]
    peaks = ", ".join(
        f"{TITLES[w]} {max(r['peak_kb'] for r in report['runs'] if r['way'] == w) / 2**20:.2f}"
        for w in ways
    )
    lines += ["", f"peak memory of a measuring process (GiB): {peaks}"]
    converts = ", ".join(
        f"{TITLES[w]} {c['seconds']:.0f} s, {c['peak_kb'] / 2**20:.2f} GiB"
        for w, c in report["convert"].items()
    )
    lines.append(f"conversion (time, peak memory): {converts}")
    if "fused" in report["convert"]:
        fusions = report["convert"]["fused"].get("fusions", {})
        lines.append("fusions: " + ", ".join(f"{k} {v}" for k, v in fusions.items()))
    return "\n".join(lines)


def _repeat_ratios(report: dict, way: str, base: str) -> dict:
    """{shape key: (lowest, highest)} of ``way``'s time over ``base``'s within each
    repeat (the two processes that ran one after the other), when there are several."""
    times = {(r["way"], r["repeat"]): r["times"] for r in report["runs"]}
    repeats = sorted({r for w, r in times if (way, r) in times and (base, r) in times})
    if len(repeats) < 2:
        return {}
    spread = {}
    for kind, batch, length in report["shapes"]:
        key = f"{kind} b{batch} L{length}"
        ratios = [times[way, r][key] / times[base, r][key] for r in repeats]
        spread[key] = (min(ratios), max(ratios))
    return spread


def _round_ratios(report: dict, way: str, base: str) -> dict:
    """{shape key: (lower quartile, median, upper quartile)} of ``way``'s time over
    ``base``'s in each round of an interleaved run (two calls close in time)."""
    rounds = report.get("rounds") or {}
    result = {}
    for key, times in rounds.items():
        if way in times and base in times:
            ratios = [a / b for a, b in zip(times[way], times[base], strict=True)]
            q1, q2, q3 = statistics.quantiles(ratios, n=4)
            result[key] = (q1, q2, q3)
    return result


def _load_ratios(report: dict, way: str, base: str) -> dict:
    """{shape key: [median of each round's ratio, one per load]} of an interleaved run
    loaded more than once (``--blocks``), in the order of the loads."""
    sizes = report.get("block_rounds") or []
    if len(sizes) < 2:
        return {}
    result = {}
    for key, times in (report.get("rounds") or {}).items():
        if way in times and base in times:
            ratios = [a / b for a, b in zip(times[way], times[base], strict=True)]
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            result[key] = [
                statistics.median(ratios[s : s + n])
                for s, n in zip(starts, sizes, strict=True)
                if n
            ]
    return result


def _medians(report: dict) -> dict:
    """{shape key: {way: median seconds over the repeats}}."""
    ways = list(dict.fromkeys(r["way"] for r in report["runs"]))
    return {
        f"{kind} b{batch} L{length}": {
            w: statistics.median(
                r["times"][f"{kind} b{batch} L{length}"] for r in report["runs"] if r["way"] == w
            )
            for w in ways
        }
        for kind, batch, length in report["shapes"]
    }


def plot(report: dict, path: str) -> None:
    """One group of bars per shape, one bar per way, in ms; a decode shape's bandwidth
    floor as a black tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    medians = _medians(report)
    ways = list(next(iter(medians.values())))
    keys = list(medians)
    width = 0.8 / len(ways)
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(keys)), 4.5))
    for i, way in enumerate(ways):
        xs = [k + (i - (len(ways) - 1) / 2) * width for k in range(len(keys))]
        ax.bar(xs, [1e3 * medians[key][way] for key in keys], width, label=TITLES[way])
    for k, key in enumerate(keys):
        kind, batch, length = key.split()
        if kind == "decode":
            read = (
                report["weight_bytes"]
                + int(batch[1:]) * int(length[1:]) * report["kv_bytes_per_token"]
            )
            floor = 1e3 * read / report["bandwidth"]
            ax.hlines(floor, k - 0.45, k + 0.45, colors="black", linewidth=2)
    ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("ms per call (log scale)")
    layers = f" ({report['layers']} layers)" if report.get("layers") else ""
    ax.set_title(
        f"{report['source']}{layers}, float32, {report['threads']} threads, {report['date']}\n"
        "black: the bandwidth floor of a decode step",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
