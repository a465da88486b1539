"""
Export one decoder layer with inputs recorded from the whole model
===================================================================

A decoder layer of a transformers model takes arguments that the model computes
(rotary embeddings, positions, a mask), so writing its example inputs by hand is error
prone. This recipe records them with a forward hook during a call of the whole
untrained ``arnir0/Tiny-LLM``, exports the layer alone with
:func:`torch.export.export`, and checks the exported layer on inputs recorded from
another call with other shapes.
"""

# %%
# Record what the layer receives
# ------------------------------
#
# A forward hook registered with ``with_kwargs=True`` sees the positional and keyword
# arguments of every call and the output. It keeps a copy of all three.

import copy

import torch

from exportcheck import string_type, untrained_model

tiny = untrained_model("arnir0/Tiny-LLM")
model, config = tiny.model, tiny.config
layer = model.model.layers[0]
print(type(layer).__name__)

calls = []


def record(module, args, kwargs, output):
    calls.append(copy.deepcopy((args, kwargs, output)))


handle = layer.register_forward_hook(record, with_kwargs=True)

# %%
# Call the whole model twice, with batch 2 and 7 tokens, then batch 3 and 12 tokens,
# without a cache. The hook is removed after the two calls.

generator = torch.Generator().manual_seed(0)
try:
    with torch.no_grad():
        for batch, length in [(2, 7), (3, 12)]:
            input_ids = torch.randint(0, config.vocab_size, (batch, length), generator=generator)
            model(input_ids=input_ids, use_cache=False)
finally:
    handle.remove()

for args, kwargs, output in calls:
    print("args:  ", string_type(args, with_shape=True))
    print("kwargs:", string_type(kwargs, with_shape=True))
    print("output:", string_type(output, with_shape=True))

# %%
# Dynamic shapes for recorded inputs
# ----------------------------------
#
# The hidden states come as the only positional argument, the rest as keyword
# arguments, and without padding the model passes no mask. The dynamic shapes follow
# that structure, keyed by argument name: batch and sequence for the hidden states,
# the sequence for the rotary embeddings and positions (their batch is 1), ``None``
# for the arguments that are not tensors.

export_args, export_kwargs, _ = calls[0]
batch = torch.export.Dim("batch", min=1, max=1024)
seq = torch.export.Dim("seq_length", min=1, max=1024)
dynamic_shapes = {
    "hidden_states": {0: batch, 1: seq},
    "attention_mask": None,
    "position_embeddings": ({1: seq}, {1: seq}),
    "position_ids": {1: seq},
    "cache": None,
    "use_cache": None,
}
assert set(dynamic_shapes) == {"hidden_states", *export_kwargs}, sorted(export_kwargs)

ep = torch.export.export(layer, export_args, kwargs=export_kwargs, dynamic_shapes=dynamic_shapes)
print(ep.graph_signature)
print("range constraints:", ep.range_constraints)

# %%
# Check on the second call
# ------------------------
#
# The program's inputs are the layer's nine weights and one input per recorded
# argument; ``None`` and ``bool`` arguments were traced as constants that the program
# checks (``use_cache=True`` fails a guard). On the second recorded call, with another
# batch and length, the exported layer must reproduce the output the layer gave inside
# the model.

from exportcheck import max_diff

check_args, check_kwargs, check_output = calls[1]
print("check inputs:", string_type((check_args, check_kwargs), with_shape=True))
got = ep.module()(*check_args, **check_kwargs)
diff = max_diff(check_output, got)
print(f"exported layer vs the layer inside the model: max abs diff {diff['abs']:.2e}")
torch.testing.assert_close(got, check_output, atol=1e-5, rtol=1e-5)
print(
    "check passed: the exported decoder layer reproduces the whole model's layer output "
    f"on unseen shape {tuple(check_output.shape)}, max abs diff {diff['abs']:.2e}"
)

# %%
# A forward hook gives the exact arguments a submodule receives inside the model, and
# the submodule exported from them computes what it computes there, on other shapes.
