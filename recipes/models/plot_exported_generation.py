"""
Greedy generation driven by an exported decode step
====================================================

An exported LLM is one forward step; generating text means calling it in a loop and
feeding back the cache it returns. This recipe writes that loop for the untrained
``arnir0/Tiny-LLM``: export a decode step with :func:`torch.export.export`, pick the
most likely token at each step, and check that the 20 tokens are the ones
``model.generate(..., do_sample=False)`` produces in eager PyTorch.
"""

# %%
# Export a decode step
# --------------------
#
# The step takes new tokens, the attention mask and the ``DynamicCache`` of the tokens
# before, and returns logits and the extended cache. Batch, number of new tokens and
# cache length are dynamic, so the one program serves every step of the loop.

import copy

import torch

from exportcheck import cache_pytrees, string_type, untrained_model

tiny = untrained_model("arnir0/Tiny-LLM")
model, config = tiny.model, tiny.config
print("export inputs:", string_type(tiny.inputs, with_shape=True))
with cache_pytrees():
    ep = torch.export.export(
        model, (), kwargs=copy.deepcopy(tiny.inputs), dynamic_shapes=tiny.dynamic_shapes
    )
print("range constraints:", ep.range_constraints)

# %%
# The reference: eager greedy generation
# --------------------------------------
#
# Two prompts of 8 random tokens, 20 new tokens each, greedy decoding.

generator = torch.Generator().manual_seed(1)
prompt = torch.randint(0, config.vocab_size, (2, 8), generator=generator)
with torch.no_grad():
    generated = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False
    )
expected_tokens = generated[:, prompt.shape[1] :]
print("generate returned", tuple(generated.shape), "new tokens:", tuple(expected_tokens.shape))

# %%
# The loop
# --------
#
# The program needs a cache of at least one token, so the prompt without its last
# token goes through the eager model once (a prefill, which could be a second exported
# program without a cache). Then each step runs the exported program on one token,
# takes the argmax of the last logits as the next token, and feeds the returned cache
# back with a mask one longer.


def greedy_with_program(program, prompt, max_new_tokens):
    batch = prompt.shape[0]
    with torch.no_grad():
        prefill = model(
            input_ids=prompt[:, :-1], attention_mask=torch.ones_like(prompt[:, :-1]), use_cache=True
        )
    cache, next_ids = prefill.cache, prompt[:, -1:]
    new_tokens, lengths = [], []
    for step in range(max_new_tokens):
        cache_length = cache.get_seq_length()
        mask = torch.ones((batch, cache_length + 1), dtype=torch.int64)
        outputs = program(input_ids=next_ids, attention_mask=mask, cache=cache)
        next_ids = outputs.logits[:, -1].argmax(dim=-1, keepdim=True)
        cache = outputs.cache
        new_tokens.append(next_ids)
        lengths.append((cache_length, cache.get_seq_length()))
        if step % 5 == 0:
            print(f"step {step:2}: cache in {cache_length:2} tokens, out {cache.get_seq_length()}")
    return torch.cat(new_tokens, dim=1), lengths


with cache_pytrees():
    tokens, lengths = greedy_with_program(ep.module(), prompt, max_new_tokens=20)
print("exported loop tokens:", tuple(tokens.shape))

# %%
# Check against generate
# ----------------------
#
# Every decode step ran on a cache length the export did not see (7 to 26 tokens, with
# batch 2 and one new token). The tokens must be exactly those of eager greedy
# generation.

for row, (got, expected) in enumerate(zip(tokens, expected_tokens, strict=True)):
    print(f"prompt {row}: exported {got.tolist()}")
    print(f"          generate {expected.tolist()}")

# %%
# Left, the cache each step received and returned, against the 30 cached tokens of
# the export inputs; right, the token each step picked, over the tokens of
# ``generate``.

# sphinx_gallery_thumbnail_number = 1
import matplotlib.pyplot as plt

steps = range(len(lengths))
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
left.plot(steps, [i for i, _ in lengths], marker="o", label="cache in")
left.plot(steps, [o for _, o in lengths], marker=".", label="cache out")
left.axhline(
    tiny.inputs["cache"].get_seq_length(), color="tab:red", linestyle="--", label="export inputs"
)
left.set_xlabel("decode step")
left.set_ylabel("cached tokens")
left.legend(fontsize=8)
left.set_title("one exported program, a longer cache at every step", fontsize=10)
for row, color in zip(range(tokens.shape[0]), ["tab:blue", "tab:green"], strict=False):
    right.plot(steps, expected_tokens[row], "x", color="black", markersize=9)
    right.plot(steps, tokens[row], "o", color=color, fillstyle="none", label=f"prompt {row}")
right.plot([], [], "x", color="black", label="generate")
right.set_xlabel("decode step")
for ax in (left, right):
    ax.xaxis.get_major_locator().set_params(integer=True)
right.set_ylabel("token id")
right.legend(fontsize=8)
right.set_title("exported loop (circles) and generate (crosses)", fontsize=10)
fig.tight_layout()

# %%
# The tokens must be exactly those of eager greedy generation.

torch.testing.assert_close(tokens, expected_tokens, rtol=0, atol=0)
print(
    f"check passed: the exported decode loop generates the same {tokens.shape[1]} tokens "
    f"as eager greedy generate for {tokens.shape[0]} prompts"
)

# %%
# One exported decode step, called in a loop that feeds back its cache, generates
# exactly the tokens of eager greedy generation.
