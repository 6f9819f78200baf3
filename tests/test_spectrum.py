"""The Spectrum peer selector (benchmarks/spectrum.py): the SNR rises with a planted low-rank signal, and the blocks
where one is planted are the ones selected."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.spectrum import matrix_snr, spectrum_blocks


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def low_rank(shape, rank, norm, generator):
    """A random rank-`rank` matrix with spectral norm `norm`."""
    signal = torch.randn(shape[0], rank, generator=generator) @ torch.randn(rank, shape[1], generator=generator)
    return signal * norm / torch.linalg.matrix_norm(signal, 2)


def tiny_llama(seed=0):
    """6 blocks, hidden 64: q_proj is 64 x 64, v_proj 32 x 64 (2 KV heads); init N(0, 0.02) everywhere."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                                        num_attention_heads=4, num_key_value_heads=2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_low_rank_signal_raises_snr(seed):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(64, 64, generator=generator) * 0.02
    signal = low_rank(noise.shape, 4, 10 * torch.linalg.matrix_norm(noise, 2), generator)
    pure, planted = matrix_snr(noise), matrix_snr(noise + signal)
    assert pure < 1.0  # 0.80-0.95 over seeds 0-4
    assert planted > 2 * pure  # 2.2-2.8
    # scale-free and orientation-free; the paper's variant is the same ratio over the largest singular value
    assert matrix_snr(3 * noise) == pytest.approx(pure)
    assert matrix_snr(noise[:, :40].T) == pytest.approx(matrix_snr(noise[:, :40]))
    assert matrix_snr(noise, normalize=True) == pytest.approx(pure / torch.linalg.matrix_norm(noise.double(), 2))


@pytest.mark.parametrize("planted", [[1, 4], [0, 3]])
def test_planted_blocks_are_selected(planted):
    model = tiny_llama()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in planted:
            for name in ("q_proj", "v_proj"):
                weight = getattr(model.model.layers[block].self_attn, name).weight
                weight.add_(low_rank(weight.shape, 4, 10 * torch.linalg.matrix_norm(weight, 2), generator))
    assert spectrum_blocks(model, ["q_proj", "v_proj"], 2) == planted


def test_k_beyond_block_count():
    with pytest.raises(ValueError, match="k=7"):
        spectrum_blocks(tiny_llama(), ["q_proj"], 7)
