"""transformers' own exporters beside exportcheck, on the vision side of the
image-text-to-text models: does the peer's export run and match on inputs it did not see?

For each model type exportcheck builds, :func:`peer_vision` records:

1. what ``transformers.exporters.utils.decompose_for_generation`` returns for the
   generation prompt exportcheck checks (its component names), the peer's documented way
   to split a generative model into graphs, and the inputs its capture of ``generate``'s
   prefill forward held;
2. the vision encoder as ``decompose_multimodal`` captures it from one forward on the
   same prompt (the module ``get_encoder("image")`` gives, with the inputs it was called
   with), exported by ``OnnxExporter`` with ``OnnxConfig(dynamic=True)``;
3. that graph run in onnxruntime on the image sets of exportcheck's own vision encoder
   that differ from the prompt's (other image counts, other grids): the module's inputs
   captured from ``get_image_features`` on each set, completed by the peer's own
   ``precompute_export_inputs`` and fed by its ``onnx_feed``, compared with the eager
   module on the same inputs.

``exportcheck peer`` writes one row per model type to ``peer.jsonl`` beside the task's
results; ``exportcheck report`` renders it as a section of the task's status page.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import tempfile
import time
from collections.abc import Iterable
from typing import Any

__all__ = ["PEER_RESULTS", "peer_vision", "sweep_peer"]

TASK = "image-text-to-text"
#: the results file of ``exportcheck peer`` beside a task's results.jsonl
PEER_RESULTS = "peer.jsonl"
#: the largest absolute difference from eager that counts as a match
ATOL = 1e-4


def _error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def _processor_images(encoder: Any, index: int, model: Any) -> dict[str, Any]:
    """Input set ``index`` of exportcheck's vision encoder as the processor gives it."""
    from .tasks.image_text_to_text import _processor_images as sized
    from .tasks.image_text_to_text import _tower_layout, processor_grid_images

    feeds = encoder.input_sets[index]
    convert = _tower_layout(model).get("processor_image")
    if convert is not None:  # a family's own encoder inputs, as its processor gives them
        return convert(model, feeds)
    layout = getattr(encoder.module, "layout", None)  # None: an encoder-decoder's encoder
    if layout in ("tiles", "padded"):
        return sized(layout, feeds, encoder.module.image_sizes[index], model)
    names = (
        "pixel_values",
        "image_grid_thw",
        "qformer_input_ids",
        "qformer_attention_mask",
        "pixel_attention_mask",
        "spatial_shapes",
        "high_res_pixel_values",
        "flattened_patches",
        "image_position_ids",
    )
    image = {k: v for k, v in feeds.items() if k in names}
    if layout == "stacked":
        image["pixel_values"] = image["pixel_values"][None]
    elif layout == "grid":
        image = processor_grid_images(model, image)
    return image


def _captured_inputs(model: Any, module: Any, image: dict[str, Any]) -> dict[str, Any]:
    """The keyword inputs ``module`` is called with when ``get_image_features`` runs on
    ``image`` (positional arguments bound to their names)."""
    import torch

    from .tasks.image_text_to_text import _image_function

    signature = inspect.signature(module.forward)
    seen: dict[str, Any] = {}

    def hook(_: Any, args: Any, kwargs: Any) -> None:
        if seen:
            return
        for name, value in signature.bind(*args, **kwargs).arguments.items():
            kind = signature.parameters[name].kind
            if kind == inspect.Parameter.VAR_KEYWORD:
                seen.update(copy.deepcopy(value))
            elif kind != inspect.Parameter.VAR_POSITIONAL:
                seen[name] = copy.deepcopy(value)

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            _image_function(model)(**copy.deepcopy(image))
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"get_image_features did not call {type(module).__name__}")
    return seen


def peer_vision(model_type: str) -> dict[str, Any]:
    """One row: the peer's decomposition and its vision encoder's export checked on
    exportcheck's unseen image sets (see the module). ``ok`` is True when the graph ran
    and matched eager within :data:`ATOL` on every set; ``stage`` names the first step
    that failed (``exportcheck_build`` when exportcheck cannot build the model or its
    generation prompt, so there is nothing to compare with)."""
    import transformers

    from .patches import eager_fixes
    from .tasks import get_task, untrained_model

    started = time.time()
    row: dict[str, Any] = {
        "source": model_type,
        "task": TASK,
        "peer": f"transformers {transformers.__version__} OnnxExporter",
        "ok": False,
        "stage": None,
        "error": None,
        "sets": [],
    }

    def fail(stage: str, e: BaseException) -> dict[str, Any]:
        row.update(stage=stage, error=_error(e), seconds=round(time.time() - started, 1))
        return row

    task = get_task(TASK)
    try:
        m = untrained_model(model_type, task=TASK)
        inputs = task.processor_inputs(m)
    except Exception as e:  # a row records the failure of any step
        return fail("exportcheck_build", e)
    # a family's view of its model (BLIP's as an encoder-decoder) is exportcheck's; the
    # peer is given the model itself, with the patches that correct eager transformers
    # (exportcheck's eager reference has them: llama4's forward fails without its own)
    model = getattr(m.model, "viewed_model", m.model)
    with eager_fixes(model) as fixes:
        if fixes:
            row["eager_fixes"] = fixes
        return _peer_run(row, m, model, inputs, fail, started)


def _peer_run(
    row: dict[str, Any], m: Any, model: Any, inputs: dict[str, Any], fail: Any, started: float
) -> dict[str, Any]:
    """The rest of :func:`peer_vision`: the peer's decompositions of ``model``, its export
    of the vision encoder, and the runs on the image sets of other shapes."""
    import onnxruntime
    import torch
    from transformers.exporters import OnnxConfig, OnnxExporter
    from transformers.exporters import utils as peer

    from .compare import max_diff

    try:
        row["generation_components"] = sorted(
            peer.decompose_for_generation(model, copy.deepcopy(inputs))
        )
        # what its capture of generate's prefill forward held
        stages = peer.decompose_prefill_decode(model, copy.deepcopy(inputs))
        row["prefill_inputs"] = sorted(stages["prefill"][1])
    except Exception as e:
        row["generation_components"] = None
        row["generation_error"] = _error(e)
    try:
        parts = peer.decompose_multimodal(model, copy.deepcopy(inputs))
        module, captured = parts["image_encoder"]
        row["image_encoder"] = type(module).__name__
    except Exception as e:
        return fail("decompose", e)
    with tempfile.TemporaryDirectory(prefix="exportcheck-peer-") as folder:
        try:
            begin = time.time()
            exported = OnnxExporter().export(
                module, copy.deepcopy(captured), OnnxConfig(dynamic=True)
            )
            exported.save_pretrained(folder)
            row["export_seconds"] = round(time.time() - begin, 1)
            session = onnxruntime.InferenceSession(
                os.path.join(folder, "model.onnx"), providers=["CPUExecutionProvider"]
            )
        except Exception as e:
            return fail("export", e)
        names = [i.name for i in session.get_inputs()]
        row["graph_inputs"] = names
        # the graph that takes the image: a vision LM's vision encoder, or the encoder of an
        # encoder-decoder that reads the prompt with the image (its pixels are compared)
        encoder = next(c for c in m.components if c.name in ("vision_encoder", "encoder"))
        prompt_shapes = {k: tuple(v.shape) for k, v in captured.items() if hasattr(v, "shape")}
        for index, label in enumerate(encoder.labels):
            entry: dict[str, Any] = {"input_set": label}
            try:
                image = _processor_images(encoder, index, model)
                sample = _captured_inputs(model, module, image)
                shapes = {k: tuple(v.shape) for k, v in sample.items() if hasattr(v, "shape")}
                if shapes == prompt_shapes:
                    continue  # the shapes the peer exported on: not an unseen set
                peer.precompute_export_inputs(module, sample)
                with torch.no_grad():
                    expected = module(**copy.deepcopy(sample))
                feed = peer.onnx_feed(names, sample)
                missing = [n for n in names if n not in feed]
                if missing:
                    raise ValueError(f"the graph takes {missing}, which the inputs do not hold")
                diff = max_diff(expected, session.run(None, feed))
                entry.update(abs=diff["abs"], ok=diff["mismatch"] is None and diff["abs"] <= ATOL)
                if diff["mismatch"]:
                    entry["error"] = diff["mismatch"]
            except Exception as e:
                entry.update(ok=False, error=_error(e))
            row["sets"].append(entry)
    if not row["sets"]:
        row.update(stage="run", error="no image set of another shape than the prompt's")
    elif not all(s["ok"] for s in row["sets"]):
        bad = next(s for s in row["sets"] if not s["ok"])
        row.update(stage="run", error=bad.get("error") or f"max abs diff {bad['abs']:.3g}")
    else:
        row["ok"] = True
    row["seconds"] = round(time.time() - started, 1)
    return row


def sweep_peer(model_types: Iterable[str], out: str) -> list[dict[str, Any]]:
    """:func:`peer_vision` for each of ``model_types`` not yet in ``out``, each row
    appended as soon as it is done (an interrupted run keeps what it finished), with a
    progress bar."""
    from rich.progress import Progress

    done = set()
    if os.path.isfile(out):
        with open(out, encoding="utf-8") as f:
            done = {json.loads(line)["source"] for line in f if line.strip()}
    todo = [t for t in model_types if t not in done]
    rows = []
    with Progress() as progress:
        bar = progress.add_task("transformers.exporters on the vision encoders", total=len(todo))
        for model_type in todo:
            progress.update(bar, description=model_type)
            row = peer_vision(model_type)
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
            verdict = "ok" if row["ok"] else f"failed at {row['stage']}"
            progress.console.print(f"{model_type}: {verdict}")
            progress.advance(bar)
    return rows
