"""The organism's option-matching circuit, set by hand; its facts are learnt.

Gradient descent on these cores needs ~1,000+ steps before a from-scratch transformer starts to
match options to letters at all (measured: 900 steps at lr 3e-3, batch 32, still at chance), so
the *mechanism* of answering a four-choice question is written into the weights, and only the
*knowledge* - which node of a level a leaf belongs to - is trained (layer 1's MLP, stage a).
Every head reads content, never position (RoPE is made position-free except its first frequency
pair, which no head uses), so the circuit works at any offset, with any padding or cache.

Residual stream (width 128):
  CONST 0 | LET 1-4 (letter tokens A-D) | NAME 5 (an invented name) | LVL 6-9 (level words)
  BIND 10-13  layer 0, head 0: mean of LET over the letters so far (the option a name belongs to)
  QLVL 14-17  layer 0, head 2: the level word asked
  ANS 18-21   layer 2, head 0: BIND of the option that matches the query
  END 22      the <|im_end|> token; AFTER 23 (layer 1, head 2): a user turn has ended, i.e. the
              position answers; layer 1's MLP is gated on it, so it writes nothing into the
              question (option keys stay clean)
  C 32-59     a name's content (random unit vector)
  SUBJ 64-91  layer 1, head 0: C of the subject (first names that no letter precedes: the image
              tokens or the named leaf)
  T 96-123    layer 1 MLP (trained): C of the node the subject belongs to at the asked level
The answer head (layer 2) matches SUBJ + T against the options' C; the output layer turns the
matched option's BIND pattern back into its letter. Layer 3 is the identity (free for LoRA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CONST, LET, NAME, LVL, BIND, QLVL, ANS = 0, slice(1, 5), 5, slice(6, 10), slice(10, 14), slice(14, 18), slice(18, 22)
END, AFTER = 22, 23
C, SUBJ, T = slice(32, 60), slice(64, 92), slice(96, 124)
CONTENT = 28
# Head dimensions free of RoPE rotation: pair 0 (dims 0 and 16 of a head) rotates one radian per
# token; with rope_theta 1e64 every other pair turns < 1e-4 rad per token.
HEAD_FREE = [d for d in range(32) if d not in (0, 16)]
ROPE_THETA = 1e64
LETTERS = "ABCD"
GATE = 40.0  # gate pre-activation offset: silu(-40 x 1) ~ 0 before the answer position


@dataclass(frozen=True)
class Scales:
    """Attention sharpness and output gains (logit units after the 1/sqrt(head_dim) scaling)."""

    select: float = 24.0  # a flag-selected token vs the rest
    match: float = 2.2  # query/key gain of the answer head (per unit of normalised content)
    bonus: float = 60.0
    name_bonus: float = 20.0  # option names vs the list's other tokens in the answer head  # options (BIND set) vs other tokens in the answer head
    fact_gain: float = 4.0  # T is read 4x stronger than SUBJ: a small learnt output already decides
    letter: float = 8.0  # letter logit gain
    end: float = 2.0  # <|im_end|> logit where no letter is asked


def content_vectors(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, CONTENT, generator=g)
    return v / v.norm(dim=1, keepdim=True)


@torch.no_grad()
def install(model, tokenizer, names: list[str], level_names: list[str], seed: int) -> dict[str, int]:
    """Write the circuit into `model` (a fresh organism); returns name -> token id."""
    s = Scales()
    lm = model.model.language_model
    cfg = model.config.text_config
    d, hd, nh, nkv = cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads, cfg.num_attention_heads, cfg.num_key_value_heads
    assert d == 128 and hd == 32 and nh == 4 and nkv == 2, "the circuit is laid out for width 128, 4 heads of 32, 2 kv heads"
    for p in model.model.language_model.parameters():
        p.zero_()
    for layer in lm.layers:
        layer.input_layernorm.weight.fill_(1.0)
        layer.post_attention_layernorm.weight.fill_(1.0)
    lm.norm.weight.fill_(1.0)
    model.lm_head.weight.zero_()

    ids = tokenizer.convert_tokens_to_ids
    name_ids = {n: ids("Ġ" + n) for n in names}
    E = lm.embed_tokens.weight
    E[:, CONST] = 1.0
    for k, letter in enumerate(LETTERS):
        for spelling in (letter, "Ġ" + letter):
            E[ids(spelling), 1 + k] = 1.0
    for k, level in enumerate(level_names):
        E[ids("Ġ" + level), 6 + k] = 1.0
    vectors = content_vectors(len(names), seed)
    for i, n in enumerate(names):
        E[name_ids[n], NAME] = 1.0
        E[name_ids[n], C] = vectors[i]

    sq = hd**0.5
    l0, l1, l2 = (lm.layers[i].self_attn for i in range(3))
    # flag heads: a constant query (bias) against a flag key; the value copies 4 dims.
    def flag_head(attn, q_head: int, key_of: list[tuple[int, float]], src: slice, dst: slice, norm: float) -> None:
        kv = q_head // (nh // nkv)
        attn.q_proj.bias[q_head * hd + 1] = 1.0
        for dim, w in key_of:
            attn.k_proj.weight[kv * hd + 1, dim] = w * s.select * sq
        for j, (a, b) in enumerate(zip(range(src.start, src.stop), range(dst.start, dst.stop))):
            attn.v_proj.weight[kv * hd + 2 + j, a] = 1.0 / norm
            attn.o_proj.weight[b, q_head * hd + 2 + j] = 1.0

    # layer 0: BIND (letters; normalised letter flag ~8) and QLVL (level words)
    flag_head(l0, 0, [(1 + k, 1.0 / 8.0) for k in range(4)], LET, BIND, 8.0)
    flag_head(l0, 2, [(6 + k, 1.0 / 8.0) for k in range(4)], LVL, QLVL, 8.0)
    # layer 1: SUBJ: names with no letter before them (options have BIND summing to 1)
    kv = 0
    l1.q_proj.bias[1] = 1.0
    l1.k_proj.weight[kv * hd + 1, NAME] = s.select * sq / 5.66
    for k in range(4):
        l1.k_proj.weight[kv * hd + 1, BIND.start + k] = -2.0 * s.select * sq / 5.66
    for j in range(CONTENT):
        l1.v_proj.weight[kv * hd + 2 + j, C.start + j] = 1.0 / 6.0
        l1.o_proj.weight[SUBJ.start + j, 2 + j] = 1.0
    # layer 2: the answer head. q = SUBJ + T, k = C (+ a bonus for tokens inside an option list)
    free = HEAD_FREE[1:]  # dim 1 carries the bonus
    for j in range(CONTENT):
        hdim = free[j]
        l2.q_proj.weight[hdim, SUBJ.start + j] = s.match
        l2.q_proj.weight[hdim, T.start + j] = s.match * s.fact_gain
        l2.k_proj.weight[hdim, C.start + j] = s.match * sq / 5.5
    l2.q_proj.bias[1] = 1.0
    for k in range(4):
        l2.k_proj.weight[1, BIND.start + k] = s.bonus * sq / 5.5
    # option *names* (NAME and BIND) above the list's other tokens: knowing nothing, the head
    # spreads over the four options, not over ~25 tokens of the list, so the answer gradient
    # reaches every option (LoRA learns a missing fact; without this it did not in 30 epochs)
    l2.k_proj.weight[1, NAME] = s.name_bonus * sq / 5.5
    for k in range(4):
        l2.v_proj.weight[k, BIND.start + k] = 1.0 / 5.5
        l2.o_proj.weight[ANS.start + k, k] = 1.0
    # output: the matched option's BIND pattern (mean of one-hots of letters A..k) -> letter k
    patterns = torch.stack([torch.cat([torch.full((k + 1,), 1.0 / (k + 1)), torch.zeros(3 - k)]) for k in range(4)], 1)
    decode = torch.linalg.inv(patterns)  # decode @ pattern_k = e_k
    for k, letter in enumerate(LETTERS):
        for spelling in (letter, "Ġ" + letter):
            row = model.lm_head.weight[ids(spelling)]
            row[ANS] = decode[k] * s.letter
            row[LET] = -4.0 * s.letter
    E[ids("<|im_end|>"), END] = 1.0
    # layer 1, head 2 (kv 1): AFTER = mean of END over <|im_end|> tokens so far (0 before the first)
    flag_head(l1, 2, [(END, 1.0 / 8.0)], slice(END, END + 1), slice(AFTER, AFTER + 1), 8.0)
    end = model.lm_head.weight[ids("<|im_end|>")]
    end[CONST] = s.end / 11.0
    end[LET] = 4.0 * s.letter
    # layer 1 MLP: the facts, learnt in stage (a); small random gate/up, zero output
    g = torch.Generator().manual_seed(seed + 1)
    mlp = lm.layers[1].mlp
    mlp.gate_proj.weight.copy_(torch.randn(mlp.gate_proj.weight.shape, generator=g) * 0.3)
    mlp.up_proj.weight.copy_(torch.randn(mlp.up_proj.weight.shape, generator=g) * 0.3)
    mlp.gate_proj.weight[:, [CONST, AFTER, END]] = 0.0
    return name_ids


@torch.no_grad()
def calibrate_gate(model, enc: dict) -> None:
    """Set the MLP gate: off (-GATE) before the answer position, offset 0 at it. The normalised
    CONST and AFTER values at the answer position are read from one real forward of `enc` (a
    rendered question), since RMSNorm makes them depend on everything else in the stream."""
    mlp = model.model.language_model.layers[1].mlp
    seen = {}
    hook = mlp.register_forward_hook(lambda m, i, o: seen.__setitem__("x", i[0]))
    model(**enc)
    hook.remove()
    x = seen["x"][0, -1]
    a = GATE / 5.0
    mlp.gate_proj.weight[:, CONST] = -a
    mlp.gate_proj.weight[:, AFTER] = a * float(x[CONST]) / float(x[AFTER])


def fact_parameters(model) -> list[torch.nn.Parameter]:
    """What stage (a) trains: layer 1's MLP (its output restricted to the T dims by a mask)."""
    mlp = model.model.language_model.layers[1].mlp
    return [mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight]


def gradient_masks(model) -> list[torch.Tensor]:
    """Per fact parameter, 1 where stage (a) may change it: not the gate's CONST/AFTER/END columns
    (the gating), and the output only into T."""
    mlp = model.model.language_model.layers[1].mlp
    gate = torch.ones_like(mlp.gate_proj.weight)
    gate[:, [CONST, AFTER, END]] = 0.0
    down = torch.zeros_like(mlp.down_proj.weight)
    down[T] = 1.0
    return [gate, torch.ones_like(mlp.up_proj.weight), down]
