"""Recording on CUDA: a plain model and a transformers Llama with generate(), every mode and level,
outputs bit-identical with and without recording, statistics equal to the float64 reference."""

from __future__ import annotations

import pytest
import torch

import accdump
from accdump import ops
from accdump.store import Role

pytestmark = pytest.mark.cuda


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=256,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to("cuda", torch.bfloat16).eval()


@pytest.mark.parametrize("mode", ["stats", "tensor", "hash"])
@pytest.mark.parametrize("level", ["module", "op"])
def test_generate_records_and_observer_effect(tmp_path, mode, level):
    model = tiny_llama()
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        plain = model.generate(ids, max_new_tokens=4, do_sample=False, min_new_tokens=4)
        with accdump.record(model, tmp_path / "d", mode=mode, level=level):
            recorded = model.generate(ids, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert torch.equal(plain, recorded)
    dump = accdump.load(tmp_path / "d")
    assert dump.steps() == [0, 1, 2, 3]
    tokens = [dump.tensor(r) for r in dump.records(role=Role.TOKENS)]
    assert len(tokens) == 4 and torch.equal(tokens[0].cpu(), ids.cpu())
    assert torch.equal(torch.cat([t.reshape(-1) for t in tokens[1:]]).cpu(), plain[0, 12:15].cpu())
    recs = list(dump.records(step=0))
    assert all(r.device.startswith("cuda") for r in recs)
    if level == "module":
        names = {r.name for r in recs}
        assert "model.layers.1.self_attn.o_proj" in names
    else:
        assert any("/" in r.name for r in recs)


def test_statistics_and_tensors_exact_on_cuda(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 32)).cuda()
    x = torch.randn(16, 64, device="cuda")
    with torch.no_grad(), accdump.record(model, tmp_path / "d", mode="tensor"):
        y = model(x)
        accdump.probe("fp8", y.to(torch.float8_e4m3fn))
    dump = accdump.load(tmp_path / "d")
    out = next(dump.records(name="2", role=Role.OUTPUT))
    stored = dump.tensor(out)
    assert torch.equal(stored, y.cpu())
    want = ops.tensor_stats(y.cpu(), backend="reference")
    assert out.stats.count == want.count and out.stats.max == want.max
    assert abs(out.stats.mean - want.mean) < 1e-9 * want.absmax
    fp8 = next(dump.records(name="fp8"))
    assert torch.equal(dump.tensor(fp8).view(torch.uint8), y.to(torch.float8_e4m3fn).cpu().view(torch.uint8))


def test_compare_on_cuda_finds_planted_bug(tmp_path):
    torch.manual_seed(0)
    golden = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(6)]).cuda()
    target = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(6)]).cuda()
    target.load_state_dict(golden.state_dict())
    with torch.no_grad():
        target[3].weight.mul_(1.5)
    x = torch.randn(8, 64, device="cuda")
    for name, model in (("g", golden), ("t", target)):
        with torch.no_grad(), accdump.record(model, tmp_path / name, mode="tensor"):
            model(x)
    result = accdump.compare(tmp_path / "g", tmp_path / "t", device="cuda")
    assert result.first_divergence is not None
    assert result.first_divergence.pair.target.name == "3"
    assert result.first_divergence.pair.target.role == Role.OUTPUT
