"""Record the calls a model receives, and infer from them how to export it.

``generate`` calls the model's ``forward`` many times: a prefill with the prompt and
an empty cache, then one decode step per new token with a growing cache.
:func:`observe` records every call (deep copies of its arguments and of what it
returned); :meth:`ObservedCalls.infer` turns two or more calls into export inputs and
dynamic shapes; :meth:`ObservedCalls.check` runs an ExportedProgram on the calls the
export did not use and compares with what eager PyTorch returned::

    with observe(model) as calls:
        model.generate(input_ids, max_new_tokens=4, do_sample=False)
    print(calls.summary())
    inferred = calls.infer()
    with export_patches(model):
        ep = torch.export.export(
            model, inferred.args, inferred.kwargs, dynamic_shapes=inferred.dynamic_shapes
        )
    for result in calls.check(ep):
        print(result)

How :meth:`ObservedCalls.infer` decides:

==================  ==============================================================
what                rule
==================  ==============================================================
export call         a call whose cache is not empty (a decode step, not the
                    prefill), then the one with the most inputs, the one sharing
                    its input structure with the most calls, the one with the fewest
                    dimensions of size 0 or 1, the earliest
``batch``           dimension 0 of every input of rank 2 or more whose size is the
                    batch in every call (the batch is dimension 0 of ``input_ids``,
                    ``inputs_embeds``, or of the first input of rank 2 or more), and
                    of every tensor of the cache
``seq_length``      the last dimension of ``input_ids``, ``token_type_ids`` and
                    ``position_ids``, dimension 1 of ``inputs_embeds``, dimension 0
                    of ``cache_position``, and any dimension that varies as it does
``cache_length``    dimension 2 of the keys and values of every full-attention
                    layer of the cache (one dimension for all layers, laid out by
                    :func:`exportcheck.cache_dynamic_shapes`), and any dimension
                    that varies as it does
attention mask      its last dimension covers cached and new tokens:
                    ``seq_length`` without a cache, ``Dim.DYNAMIC`` with one (a
                    ``Dim`` cannot be the sum of two others)
other dimensions    dynamic if their size varies across calls: dimensions taking
                    the same sizes in every call share one ``Dim``, named after the
                    first of them (``args_0_dim1``); static otherwise
absent inputs       an input not passed, ``None`` or an empty cache in some calls
                    is reported in ``absent``; the export takes its value from the
                    export call
==================  ==============================================================

``batch``, ``seq_length`` and ``cache_length`` are dynamic even when they take one
size in every call: a note then says how to confirm it. ``torch.export`` specializes
a dimension whose example size is 0 or 1, and a decode step has one new token and
often a batch of 1: the export inputs repeat the last slice of the export call along
such dimensions until they reach 2 (a note says so). They are not an observed call;
:meth:`ObservedCalls.check` only compares observed calls.

Constants passed through the ``**kwargs`` of ``forward`` (``return_dict=True`` from
``generate``) are left out of the export inputs: ``torch.export`` reorders such
arguments when it matches them with ``dynamic_shapes`` and fails with "Must provide
a tree_name when there might be a mismatch". A cache passed through ``**kwargs``
under the deprecated name ``past_key_values`` is passed as ``cache`` when
``forward`` has that parameter.
"""

from .check import CallCheck
from .infer import InferredInputs
from .record import ObservedCall, ObservedCalls, observe

__all__ = ["CallCheck", "InferredInputs", "ObservedCall", "ObservedCalls", "observe"]
