"""The tiny fixtures' architectures (orchestrator/fixtures.py): the study's seven and today's, each a transformers
config with the traits of the real models of that architecture, in three sizes."""

from __future__ import annotations

ARCHITECTURES = ("gpt2", "gpt_bigcode", "gpt_neox", "bloom", "llama", "gemma", "phi")
# The architectures users run today (issue: same answers on today's models), each with the trait that makes it differ:
# sliding-window attention shorter than prompt + new tokens (gemma2, gemma3, mistral), interleaved local/global layers
# (gemma2/3), QK-norm (qwen3), llama3 rope scaling, fused QKV (phi3), NoPE layers (smollm3).
MODERN_ARCHITECTURES = ("gemma2", "gemma3", "qwen2", "qwen3", "llama3", "phi3", "starcoder2", "smollm3", "mistral")
ALL_ARCHITECTURES = ARCHITECTURES + MODERN_ARCHITECTURES
SLIDING_WINDOW = 16  # tokens: fragments are 10–15 tokens, so any run with ≥ 8 new tokens crosses the window
SIZES = ("tiny", "bench100m", "bench1b")

# (hidden, layers, heads) per size; head_dim = hidden // heads is 64 (phi: 80, as in phi-2) because vLLM's CPU
# attention rejects heads narrower than 32.
_SHAPES: dict[str, dict[str, tuple[int, int, int]]] = {
    "tiny": {"default": (128, 2, 2), "phi": (160, 2, 2)},
    # ~90M parameters with the trained vocabulary: codeparrot-small's shape (12 x 768, 12 heads)
    "bench100m": {"default": (768, 12, 12), "phi": (800, 12, 10)},
    # ~1B parameters (Llama: 0.99B with the trained vocabulary): TinyLlama's width and depth, big enough that batch-1
    # decode on a GPU is bound by reading the weights (the GPU acceptance kit's bandwidth-floor model)
    "bench1b": {"default": (2048, 22, 32), "phi": (2080, 22, 26)},
}


def _shape(arch: str, size: str) -> tuple[int, int, int]:
    shapes = _SHAPES[size]
    return shapes.get(arch, shapes["default"])


def _gated_ffn(hidden: int) -> int:
    # SwiGLU/GeGLU width that keeps the parameter count of a 4x plain MLP, rounded to a multiple of 32
    return 32 * round(8 * hidden / 3 / 32)


def make_config(arch: str, size: str, vocab_size: int, special: dict[str, int]):
    """A config of the given architecture with the traits of the study's models of that architecture."""
    import transformers as tf

    hidden, layers, heads = _shape(arch, size)
    head_dim = hidden // heads
    common = dict(vocab_size=vocab_size, initializer_range=0.02, use_cache=True, **special)
    if arch == "gpt2":  # codeparrot-small: learned positions, tied embeddings
        # n_ctx: the legacy key real GPT-2 configs still carry and llama.cpp's converter reads
        return tf.GPT2Config(n_positions=1024, n_ctx=1024, n_embd=hidden, n_layer=layers, n_head=heads,
                             activation_function="gelu_new", tie_word_embeddings=True, **common)
    if arch == "gpt_bigcode":  # tiny_starcoder / starcoderbase: multi-query attention, learned positions
        return tf.GPTBigCodeConfig(n_positions=2048, n_embd=hidden, n_layer=layers, n_head=heads,
                                   multi_query=True, activation_function="gelu_pytorch_tanh",
                                   tie_word_embeddings=True, **common)
    if arch == "gpt_neox":  # pythia / stablecode: rotary on a quarter of each head, parallel residual, untied
        return tf.GPTNeoXConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                intermediate_size=4 * hidden, hidden_act="gelu", rotary_pct=0.25,
                                rotary_emb_base=10000, max_position_embeddings=2048, use_parallel_residual=True,
                                tie_word_embeddings=False, **common)
    if arch == "bloom":  # bloomz: ALiBi (no position table), tied embeddings
        return tf.BloomConfig(hidden_size=hidden, n_layer=layers, n_head=heads, tie_word_embeddings=True, **common)
    if arch == "llama":  # TinyLlama: grouped-query attention, SwiGLU, RMSNorm, untied
        return tf.LlamaConfig(hidden_size=hidden, intermediate_size=_gated_ffn(hidden), num_hidden_layers=layers,
                              num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), hidden_act="silu",
                              max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                              tie_word_embeddings=False, **common)
    if arch == "gemma":  # codegemma-2b: multi-query attention, explicit head_dim, GeGLU, tied
        return tf.GemmaConfig(hidden_size=hidden, intermediate_size=_gated_ffn(hidden), num_hidden_layers=layers,
                              num_attention_heads=heads, num_key_value_heads=1, head_dim=head_dim,
                              hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
                              max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0,
                              tie_word_embeddings=True, **common)
    if arch == "phi":  # phi-2: 80-wide heads with partial rotary 0.4 (= 32 dims), parallel block, untied
        return tf.PhiConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, hidden_act="gelu_new", max_position_embeddings=2048,
                            partial_rotary_factor=0.4, rope_theta=10000.0, qk_layernorm=False,
                            layer_norm_eps=1e-5, tie_word_embeddings=False, **common)
    if arch in MODERN_ARCHITECTURES:
        return _modern_config(tf, arch, hidden, layers, heads, common)
    raise ValueError(f"unknown arch {arch!r}")


def _modern_config(tf, arch: str, hidden: int, layers: int, heads: int, common: dict):
    """Configs of today's architectures with their distinguishing traits (tiny: 2 layers, or 4 where a layer pattern
    needs them), built from transformers' own config classes."""
    head_dim = hidden // heads
    gated = dict(hidden_size=hidden, intermediate_size=_gated_ffn(hidden), num_attention_heads=heads,
                 rms_norm_eps=1e-6, **common)
    if arch == "gemma2":  # local/global alternation, soft-capping, sliding window
        return tf.Gemma2Config(num_hidden_layers=layers, num_key_value_heads=1, head_dim=head_dim,
                               sliding_window=SLIDING_WINDOW, max_position_embeddings=8192,
                               hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, **gated)
    if arch == "gemma3":  # 5 local : 1 global in the real model; here one of each
        return tf.Gemma3TextConfig(num_hidden_layers=layers, num_key_value_heads=1, head_dim=head_dim,
                                   sliding_window=SLIDING_WINDOW, layer_types=["sliding_attention", "full_attention"],
                                   max_position_embeddings=8192, tie_word_embeddings=True, **gated)
    if arch == "qwen2":  # GQA, QKV bias, tied (small Qwen2.5)
        return tf.Qwen2Config(num_hidden_layers=layers, num_key_value_heads=1, max_position_embeddings=4096,
                              tie_word_embeddings=True, **gated)
    if arch == "qwen3":  # QK-norm, explicit head_dim
        return tf.Qwen3Config(num_hidden_layers=layers, num_key_value_heads=1, head_dim=head_dim,
                              max_position_embeddings=4096, tie_word_embeddings=True, **gated)
    if arch == "llama3":  # GQA + llama3 rope scaling (Llama 3.1/3.2)
        return tf.LlamaConfig(num_hidden_layers=layers, num_key_value_heads=1, max_position_embeddings=131072,
                              rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                                 "original_max_position_embeddings": 8192},
                              tie_word_embeddings=True, **gated)
    if arch == "phi3":  # fused qkv and gate_up projections
        return tf.Phi3Config(num_hidden_layers=layers, num_key_value_heads=heads, max_position_embeddings=4096,
                             original_max_position_embeddings=4096, tie_word_embeddings=False, **gated)
    if arch == "starcoder2":  # GQA, biases, LayerNorm, plain GELU MLP
        return tf.Starcoder2Config(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                                   num_attention_heads=heads, num_key_value_heads=1, max_position_embeddings=4096,
                                   sliding_window=None, **common)
    if arch == "smollm3":  # every 4th layer without RoPE (NoPE): 4 layers so one of them is
        return tf.SmolLM3Config(num_hidden_layers=4, num_key_value_heads=1, max_position_embeddings=4096,
                                no_rope_layer_interval=4, tie_word_embeddings=True, **gated)
    if arch == "mistral":  # sliding window attention shorter than prompt + new tokens
        return tf.MistralConfig(num_hidden_layers=layers, num_key_value_heads=1, head_dim=head_dim,
                                sliding_window=SLIDING_WINDOW, max_position_embeddings=4096,
                                tie_word_embeddings=False, **gated)
    raise ValueError(f"unknown arch {arch!r}")


def head_dim(config) -> int:
    """Attention head width of a transformers config, whatever the architecture calls its fields."""
    explicit = getattr(config, "head_dim", None)
    if explicit:
        return int(explicit)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head")
    return int(hidden) // int(heads)


def max_positions(config) -> int:
    return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048)

