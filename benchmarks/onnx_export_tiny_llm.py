"""ONNX export of Tiny-LLM: exportcheck vs ``transformers.exporters.OnnxExporter``, side by side.

Each measurement is a fresh process run under ``/usr/bin/time -v`` (peak resident
memory), and the two ways alternate, so that both see the same machine load. The time
is measured inside the process around the export call only (the model and its inputs
are built before); the memory is the peak of the whole process. Both exported models
are checked against eager on an input set the export did not see.

    python benchmarks/onnx_export_tiny_llm.py --repeat 3

Prints one line per run, then the medians and the ratios exportcheck / transformers.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time


def _run_one(way: str, folder: str) -> dict:
    import torch

    from exportcheck import export_patches, max_diff, ort_feeds, untrained_model

    m = untrained_model("arnir0/Tiny-LLM")
    path = os.path.join(folder, f"{way}.onnx")
    begin = time.perf_counter()
    if way == "exportcheck":
        with export_patches(m.model), torch.no_grad():
            ep = torch.export.export(
                m.model, (), kwargs=copy.deepcopy(m.inputs), dynamic_shapes=m.dynamic_shapes
            )
            torch.onnx.export(ep, (), path, kwargs=copy.deepcopy(m.inputs), dynamo=True)
    else:
        from transformers.exporters.configs import OnnxConfig
        from transformers.exporters.exporter_onnx import OnnxExporter

        exported = OnnxExporter().export(m.model, copy.deepcopy(m.inputs), OnnxConfig(dynamic=True))
        exported.save_pretrained(folder)
        path = next(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".onnx"))
    seconds = time.perf_counter() - begin

    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = m.other_inputs[-1]  # batch 3, 4 new tokens, 17 cached: not the export shapes
    # both graphs take the cache tensors in pytree order
    got = session.run(None, ort_feeds(session, feeds))
    with torch.no_grad():
        expected = m.model(**copy.deepcopy(feeds))
    diff = max_diff(expected, got)
    return {"way": way, "seconds": seconds, "max_abs_diff": diff["abs"], "outputs": len(got)}


def _measure(way: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--child", way, "--folder", folder]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{way} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    result["peak_mib"] = int(peak.group(1)) / 1024 if peak else float("nan")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=("exportcheck", "transformers"))
    parser.add_argument("--folder")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_run_one(args.child, args.folder)))
        return
    runs = []
    for i in range(args.repeat):
        for way in ("exportcheck", "transformers"):
            r = _measure(way)
            runs.append(r)
            print(
                f"run {i + 1} {way:12} export {r['seconds']:6.2f} s  peak {r['peak_mib']:7.0f} MiB"
                f"  max abs diff vs eager {r['max_abs_diff']:.2e} ({r['outputs']} outputs)",
                flush=True,
            )
    med = {
        way: {
            key: statistics.median(r[key] for r in runs if r["way"] == way)
            for key in ("seconds", "peak_mib", "max_abs_diff")
        }
        for way in ("exportcheck", "transformers")
    }
    for way, m in med.items():
        print(f"median {way:12} export {m['seconds']:6.2f} s  peak {m['peak_mib']:7.0f} MiB")
    ratio_t = med["exportcheck"]["seconds"] / med["transformers"]["seconds"]
    ratio_m = med["exportcheck"]["peak_mib"] / med["transformers"]["peak_mib"]
    print(f"ratio exportcheck / transformers: time {ratio_t:.2f}, peak memory {ratio_m:.2f}")


if __name__ == "__main__":
    main()
