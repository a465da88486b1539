"""Does every checked output depend on the inputs it is checked on?

A numerical check compares a graph's outputs with eager's on the same inputs. On an
untrained model an output can be nearly constant in one of its inputs (activations that
vanish layer after layer, a gate that stays closed, a decoder that does not read its
encoder): the check then passes whatever the graph does with that input. This module
measures, for every graph a task exports, how far its main output moves when one primary
input of the first input set is replaced by another of the same shape (random token ids,
random values), everything else equal.

Primary inputs are the token ids and the float inputs (features, pixels, encoder states,
embeddings); masks, positions, caches and the sizes or indices computed from them are
left as they are, since a random mask or position is not an input a model is given.

Run it on the green rows of a sweep, then summarize what it wrote::

    python -m exportcheck.sensitivity --results docs/status/fill-mask/results.jsonl \\
        --out docs/status/fill-mask/sensitivity.jsonl
    python -m exportcheck.sensitivity --summary docs/status/*/sensitivity.jsonl
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["Moved", "component_sensitivity", "ignored", "input_sensitivity", "summary"]

#: parts of an input's name that mark it as no primary input: it is left unchanged
NOT_PRIMARY = (
    "mask",
    "position",
    "cache",
    "past",
    "token_type",
    "lengths",
    "cu_",
    "grid",
    "sizes",
    "index",
    "order",
    "interp",
    "shapes",
)
#: the checks' default tolerance: an input whose replacement moves the output by no
#: more than this could be dropped by a graph without any check seeing it
TOLERANCE = 1e-4


@dataclasses.dataclass
class Moved:
    """How far one graph's main output moved when one input changed.

    * ``component``: the graph (``model``, ``encoder``, ``decoder``, ...)
    * ``input``: the input that was replaced
    * ``output``: the output measured (``logits``, ``last_hidden_state``, ...)
    * ``moved``: the largest absolute change of that output
    * ``scale``: the output's largest absolute value on the first input set, over the
      values a model does not pin to the float range's ends (the logits of tokens it
      never generates)
    * ``cached``: True when the graph also takes a cache and the input is the encoder's
      states: a decoder step reads cross-attention keys and values from its cache, so the
      states do not move it (they are given for their shape)
    """

    component: str
    input: str
    output: str
    moved: float
    scale: float
    cached: bool = False

    @property
    def read(self) -> bool:
        """True when the output moved by more than :data:`TOLERANCE`: a graph that
        dropped the input would then fail the checks."""
        return self.moved > TOLERANCE


def _main_output(out: Any) -> tuple[str, Any]:
    """The output a check is mostly about: logits, else the last hidden states, else image
    features (DeepStack ones where the others are zero by design), else the first float
    tensor."""
    import torch

    if hasattr(out, "keys"):
        for key in ("logits", "last_hidden_state", "features", "deepstack"):
            if key in out and torch.is_tensor(out[key]):
                if key == "features" and "deepstack" in out and not bool(out[key].any()):
                    continue  # zero by design: the image enters by DeepStack (Granite 4)
                return key, out[key]
    if torch.is_tensor(out):
        return "output", out
    leaves = [
        x
        for x in torch.utils._pytree.tree_leaves(out)
        if torch.is_tensor(x) and x.is_floating_point()
    ]
    if not leaves:
        raise ValueError(f"no float tensor among the outputs ({type(out).__name__})")
    return "output 0", leaves[0]


def _replacement(
    name: str, value: Any, vocab: int, generator: Any, special: frozenset[int] = frozenset()
) -> Any:
    """Another value of the same shape for a primary input, None for an input that is
    not one. Token ids in ``special`` (the image or audio placeholders a prompt's
    structure rests on) stay where they are, and no other token becomes one."""
    import torch

    if not torch.is_tensor(value) or any(part in name for part in NOT_PRIMARY):
        return None
    if value.is_floating_point():
        other = torch.randn(value.shape, generator=generator, dtype=value.dtype)
        if name == "flattened_patches":  # each patch's row and column stay: positions
            other[..., :2] = value[..., :2]
        return other
    if not name.endswith("input_ids") or vocab <= 4:
        return None
    # above the ids special tokens usually take
    other = torch.randint(3, vocab, value.shape, generator=generator, dtype=value.dtype)
    if special:
        marks = torch.tensor(sorted(special), dtype=value.dtype)
        plain = next(i for i in range(3, vocab) if i not in special)
        other = torch.where(torch.isin(other, marks), plain, other)
        other = torch.where(torch.isin(value, marks), value, other)
    return other


#: the seed of the replacements: not the tasks' (0), whose first draws built the input
#: sets, so that a replacement is not the very tensor it replaces
SEED = 2027


def component_sensitivity(
    component: Any, vocab: int, seed: int = SEED, special: frozenset[int] = frozenset()
) -> list[Moved]:
    """For each primary input of ``component``'s first input set, how far the main
    output moves when that input alone is replaced (see the module)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    feeds = component.input_sets[0]
    with torch.no_grad():
        output, base = _main_output(component.module(**copy.deepcopy(feeds)))
        base = base.float()
        values = base.abs()
        kept = values[values < torch.finfo(torch.float32).max / 2]
        scale = float(kept.max()) if kept.numel() else 0.0
        has_cache = any(part in name for name in feeds for part in ("cache", "past"))
        rows = []
        for name, value in feeds.items():
            other = _replacement(name, value, vocab, generator, special)
            if other is None:
                continue
            if torch.equal(other, value):
                raise ValueError(
                    f"the replacement of {name} equals it: pass another seed than {seed}"
                )
            _, out = _main_output(component.module(**copy.deepcopy({**feeds, name: other})))
            moved = (
                float((out.float() - base).abs().max()) if out.shape == base.shape else float("inf")
            )
            rows.append(
                Moved(
                    component.name,
                    name,
                    output,
                    moved,
                    scale,
                    cached=has_cache and name == "encoder_hidden_states",
                )
            )
    return rows


def _vocab(model: Any) -> int:
    """The token ids valid for every token input: below the smallest of the token
    embedding's rows and the (decoder) config's vocab_size (an encoder-decoder's two
    vocabularies can differ: FSMT's source and target)."""
    sizes = []
    try:
        embedding = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # no token embedding (audio, pixels)
        embedding = None
    rows = getattr(embedding, "num_embeddings", None)
    if isinstance(rows, int):
        sizes.append(rows)
    config = model.config
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    holders = [text, config]
    if getattr(config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        # an encoder of token ids with a config of its own names its vocabulary there
        # (Dia's byte encoder: DiaConfig.get_text_config returns the decoder's whatever is
        # asked, transformers/models/dia/configuration_dia.py:158)
        encoder = model.get_encoder()
        if "input_ids" in inspect.signature(encoder.forward).parameters:
            holders.append(getattr(encoder, "config", None))
    for holder in holders:
        for key in ("vocab_size", "tgt_vocab_size", "src_vocab_size"):
            value = getattr(holder, key, None)
            if isinstance(value, int) and value > 0:
                sizes.append(value)
    return min(sizes, default=0)


def _special_ids(config: Any) -> frozenset[int]:
    """The placeholder token ids the config names (image, audio, video tokens), which a
    prompt's structure rests on."""
    found = set()
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    for holder in {id(config): config, id(text): text}.values():
        for key, value in vars(holder).items():
            placeholder = key.endswith(("_token_id", "_token_index")) and any(
                kind in key for kind in ("image", "audio", "video", "boi", "eoi")
            )
            if placeholder and isinstance(value, int) and value >= 0:
                found.add(value)
    return frozenset(found)


def input_sensitivity(m: Any, seed: int = SEED) -> list[Moved]:
    """:func:`component_sensitivity` of every graph the task exports for the built model
    ``m`` (an :class:`exportcheck.UntrainedModel`), eager fixes applied as validation
    applies them."""
    from .patches import eager_fixes
    from .tasks import get_task

    components = get_task(m.task).components(m)
    rows = []
    with eager_fixes(m.model):
        for component in components:
            rows.extend(
                component_sensitivity(component, _vocab(m.model), seed, _special_ids(m.config))
            )
    return rows


def ignored(rows: list[Moved]) -> list[Moved]:
    """The inputs an output does not read, but for encoder states a cached decoder step
    takes from its cache."""
    return [r for r in rows if not r.read and not r.cached]


def _green(results: str) -> list[str]:
    from .sweep import read_results

    return [r["source"] for r in read_results(results) if r.get("ok")]


def summary(path: str) -> str:
    """One line on a sensitivity file: how many types were audited, which have an input
    their output does not read, and the least read input of all."""
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no audited model type")
    task = lines[0]["task"]
    errors = [line["source"] for line in lines if "error" in line]
    rows = {
        line["source"]: [Moved(**m) for m in line.get("moved", [])]
        for line in lines
        if "error" not in line
    }
    weak = [
        f"{source} ({', '.join(f'{r.component}:{r.input}' for r in ignored(moved))})"
        for source, moved in rows.items()
        if ignored(moved)
    ]
    seen = [(r.moved, source, r) for source, moved in rows.items() for r in moved if not r.cached]
    text = f"{task}: {len(lines)} type{'s' if len(lines) > 1 else ''} audited"
    if errors:
        text += f", {len(errors)} could not be ({', '.join(errors)})"
    text += (
        f"; {len(weak)} with an input whose change moves the output by no more than the "
        f"checks' tolerance ({TOLERANCE:g})"
    )
    text += f": {'; '.join(weak)}" if weak else ""
    if seen:
        least, source, r = min(seen, key=lambda x: x[0])
        text += (
            f"; the least read: {source}'s {r.component} {r.input} moves its {r.output} "
            f"by {least:.1e}, {least / TOLERANCE:.0f} times the tolerance"
        )
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exportcheck.sensitivity",
        description="Measure how far each exported graph's main output moves when one of "
        "its primary inputs changes, for the green model types of a sweep's results.",
    )
    parser.add_argument("--results", help="a sweep's results.jsonl")
    parser.add_argument("--only", nargs="*", help="these model types only")
    parser.add_argument("--out", help="where to write one JSON line per type")
    parser.add_argument(
        "--summary", nargs="+", metavar="FILE", help="print one line on each sensitivity file"
    )
    args = parser.parse_args(argv)
    if args.summary:
        for path in args.summary:
            print(summary(path))
        return 0
    if not args.results or not args.out:
        parser.error("give --results and --out (or --summary FILE...)")

    from .sweep import read_results
    from .tasks import untrained_model

    rows = read_results(args.results)
    if not rows:
        parser.error(f"{args.results} holds no results: run exportcheck sweep first")
    task = rows[0]["task"]
    types = args.only or _green(args.results)
    with open(args.out, "w") as f:
        for model_type in types:
            try:
                moved = input_sensitivity(untrained_model(model_type, task=task))
            except Exception as e:  # one model's failure is recorded, the others go on
                line = {"source": model_type, "task": task, "error": f"{type(e).__name__}: {e}"}
            else:
                line = {
                    "source": model_type,
                    "task": task,
                    "moved": [dataclasses.asdict(r) for r in moved],
                    "ignored": [f"{r.component}:{r.input}" for r in ignored(moved)],
                }
            f.write(json.dumps(line) + "\n")
            f.flush()
            print(model_type, line.get("ignored", line.get("error")), file=sys.stderr)
    print(summary(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
