"""Training pieces around the model: loss, data order, LoRA, vocabulary growth, flags."""
import functools
import math

import numpy as np
import paddle
import pytest
from conftest import random_codegen

from codegen.models.codegeex import CodeGeeXConfig, CodeGeeXForCausalLM
from codegen.training.args import rewrite_argv
from codegen.training.lora import (LoRALinear, apply_lora, load_adapters, merge_lora, save_adapters,
                                   trainable_state)
from codegen.training.trainer import ShuffledBlockSampler, causal_lm_loss
from codegen.training.vocab import fit_vocab

VOCAB = 96


def small_model(kind="codegen", seed=0):
    if kind == "codegen":
        return random_codegen(seed, vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=2, n_head=4, rotary_dim=2)
    paddle.seed(seed)   # two layers: one standard, one top-query
    return CodeGeeXForCausalLM(CodeGeeXConfig(hidden_size=16, num_layers=2, num_attention_heads=4,
                                              padded_vocab_size=VOCAB, max_position_embeddings=32)).eval()


def blocks(model):
    return list(model.transformer.h) if model.config.model_type == "codegen" else [*model.layers,
                                                                                   model.top_query_layer]


def ids(batch=2, length=10, seed=0):
    return paddle.to_tensor(np.random.default_rng(seed).integers(0, VOCAB, (batch, length)), dtype="int64")


def test_loss_is_next_token_cross_entropy():
    logits = paddle.to_tensor(np.random.default_rng(1).normal(size=(2, 5, 7)), dtype="float32")
    labels = paddle.to_tensor([[1, 2, 3, 4, 5], [6, 0, 1, 2, 3]], dtype="int64")
    lp = logits.numpy() - np.log(np.exp(logits.numpy()).sum(-1, keepdims=True))
    expected = -np.mean([lp[b, t, labels.numpy()[b, t + 1]] for b in range(2) for t in range(4)])
    assert causal_lm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-5)


def test_sampler_gives_each_rank_its_own_share_and_repeats_per_seed():
    dataset = list(range(23))

    def batches(rank, seed=5, epoch=0):
        sampler = ShuffledBlockSampler(dataset, 4, num_replicas=2, rank=rank, seed=seed, drop_last=False)
        sampler.set_epoch(epoch)
        return list(sampler)

    rank0, rank1 = batches(0), batches(1)
    seen0 = [i for b in rank0 for i in b]
    seen1 = [i for b in rank1 for i in b]
    assert len(rank0) == len(rank1) == len(ShuffledBlockSampler(dataset, 4, 2, 0, 5, False))
    assert len(seen0) == len(seen1) == 12
    # 23 blocks over 2 ranks: one block repeated to even them out, none missing
    assert set(seen0) | set(seen1) == set(dataset)
    assert len(set(seen0) & set(seen1)) <= 1
    assert batches(0) == rank0
    assert batches(0, epoch=1) != rank0
    assert batches(0, seed=6) != rank0


def test_lora_starts_at_the_base_model_and_trains_only_adapters():
    model = small_model()
    x = ids()
    before = model(x).numpy()
    names_before = set(model.state_dict())
    trainable = apply_lora(model, rank=2, alpha=4, target="qkv,fc")
    np.testing.assert_allclose(model(x).numpy(), before, atol=1e-6)
    # per layer: qkv 16->48, fc_in 16->64, fc_out 64->16, each with A [in, 2] and B [2, out]
    assert trainable == 2 * (2 * (16 + 48) + 2 * (16 + 64) + 2 * (64 + 16))
    assert set(trainable_state(model)) == set(model.state_dict()) - names_before
    assert all(".lora_" in name for name in trainable_state(model))
    assert isinstance(model.transformer.h[0].attn.qkv_proj, LoRALinear)
    assert not isinstance(model.transformer.h[0].attn.out_proj, LoRALinear)
    with pytest.raises(ValueError, match="choose from qkv, out, fc"):
        apply_lora(small_model(), rank=2, alpha=4, target="attention")


@pytest.mark.parametrize("kind", ["codegen", "codegeex"])
def test_merged_lora_model_computes_what_the_adapted_one_did(tmp_path, kind):
    model = small_model(kind)
    base = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    apply_lora(model, rank=2, alpha=8, target="qkv,out,fc")
    model.train()
    optimizer = paddle.optimizer.AdamW(learning_rate=0.05, parameters=[p for p in model.parameters()
                                                                        if not p.stop_gradient])
    x = ids(length=12)
    for _ in range(3):
        loss = causal_lm_loss(model(x), x)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
    model.eval()
    adapted = model(x).numpy()
    state = model.state_dict()
    assert all(np.array_equal(state[k].numpy(), v) for k, v in base.items())  # base weights frozen

    save_adapters(model, tmp_path, {"rank": 2})
    reloaded = small_model(kind)
    apply_lora(reloaded, rank=2, alpha=8, target="qkv,out,fc")
    load_adapters(reloaded, tmp_path)
    np.testing.assert_allclose(reloaded(x).numpy(), adapted, atol=1e-5)

    merge_lora(model)
    assert set(model.state_dict()) == set(base)
    assert not any(isinstance(layer, LoRALinear) for layer in model.sublayers())
    np.testing.assert_allclose(model(x).numpy(), adapted, atol=1e-4)
    assert not np.allclose(model(x).numpy(), small_model(kind)(x).numpy(), atol=1e-3)


def test_fit_vocab_keeps_old_rows_and_adds_mean_rows():
    model = small_model()
    x = ids()
    assert fit_vocab(model, VOCAB) is model
    grown = fit_vocab(model, VOCAB + 1)
    assert grown.config.vocab_size == 128  # padded to a multiple of 64
    np.testing.assert_allclose(grown(x).numpy()[..., :VOCAB], model(x).numpy(), atol=1e-6)
    wte = grown.transformer.wte.weight.numpy()
    np.testing.assert_allclose(wte[VOCAB:], np.broadcast_to(wte[:VOCAB].mean(0), (128 - VOCAB, 16)), atol=1e-6)
    bias = grown.lm_head.bias.numpy()
    assert np.allclose(bias[VOCAB:], bias[:VOCAB].mean())


def test_fit_vocab_grows_codegeex_tied_embeddings():
    model = small_model("codegeex")
    x = ids()
    grown = fit_vocab(model, VOCAB + 70)
    assert grown.config.padded_vocab_size == 192
    assert grown.word_embeddings.weight.shape == [192, 16]
    np.testing.assert_allclose(grown(x).numpy()[..., :VOCAB], model(x).numpy(), atol=1e-5)


def test_flag_aliases_and_bare_resume():
    argv = ["--train_batch_size", "4", "--eval_batch_size=2", "--warmup_proportion=0.1", "--resume_from_checkpoint",
            "--seed", "1"]
    assert rewrite_argv(argv) == ["--per_device_train_batch_size", "4", "--per_device_eval_batch_size=2",
                                  "--warmup_ratio=0.1", "--resume_from_checkpoint", "latest", "--seed", "1"]
    assert rewrite_argv(["--resume_from_checkpoint"]) == ["--resume_from_checkpoint", "latest"]
    assert rewrite_argv(["--resume_from_checkpoint", "out/checkpoint-4"]) == \
        ["--resume_from_checkpoint", "out/checkpoint-4"]


def test_perplexity_is_exp_of_loss():
    from codegen.training.trainer import perplexity
    assert perplexity(2.0) == pytest.approx(math.exp(2.0))
    assert perplexity(1e4) == float("inf")


@pytest.mark.parametrize("kind", ["codegen", "codegeex"])
def test_recompute_reruns_blocks_in_backward_with_the_same_gradients(kind):
    from codegen.training.recompute import enable_recompute

    grads, calls = [], []
    for recompute in (False, True):
        model = small_model(kind)
        model.train()
        count = [0]

        def counting(forward):
            @functools.wraps(forward)  # keeps the signature recompute binds arguments to
            def counted(*args, **kwargs):
                count[0] += 1
                return forward(*args, **kwargs)
            return counted

        for block in blocks(model):
            block.forward = counting(block.forward)
        if recompute:
            enable_recompute(model)
        x = ids(length=12)
        causal_lm_loss(model(x), x).backward()
        grads.append({name: p.grad.numpy() for name, p in model.named_parameters()})
        calls.append(count[0])
    assert calls == [2, 4]  # two blocks, each run again in the backward pass
    for name in grads[0]:
        np.testing.assert_allclose(grads[1][name], grads[0][name], atol=1e-6)
