"""The two graphs a language model's generation loop needs, as exportable ``torch.nn.Module`` wrappers.

Lecture 13 shows them (``inspect.getsource``) and exports them to ONNX; lab 10 and lecture 14 export
the same classes. Both wrap a ``transformers`` causal LM (the course's ``LlamaForCausalLM``) and pass
the key/value cache as plain tensors, stacked over layers, so that a graph can take it as an input
and return it as an output: (layers, batch, kv_heads, sequence, head_dim).
"""
from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

#: Input and output names of the exported graphs (every runner in the course feeds these).
PREFILL_INPUTS = ["input_ids"]
DECODE_INPUTS = ["input_ids", "past_keys", "past_values"]
OUTPUTS = ["logits", "present_keys", "present_values"]


class Prefill(torch.nn.Module):
    """input_ids (batch, sequence) -> logits, and every layer's keys and values stacked:
    (layers, batch, kv_heads, sequence, head_dim). Without a cache coming in."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        out = self.model(input_ids=input_ids, use_cache=True)
        cache = out.past_key_values
        return (out.logits, torch.stack([layer.keys for layer in cache.layers]),
                torch.stack([layer.values for layer in cache.layers]))


class Decode(torch.nn.Module):
    """(input_ids (batch, 1), past_keys, past_values) -> logits, present_keys, present_values."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, past_keys, past_values):
        layers = past_keys.shape[0]
        cache = DynamicCache(ddp_cache_data=[(past_keys[i], past_values[i]) for i in range(layers)])
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0) + past_keys.shape[3]  # RoPE: after the past
        out = self.model(input_ids=input_ids, past_key_values=cache, position_ids=positions, use_cache=True)
        cache = out.past_key_values
        return (out.logits, torch.stack([layer.keys for layer in cache.layers]),
                torch.stack([layer.values for layer in cache.layers]))
