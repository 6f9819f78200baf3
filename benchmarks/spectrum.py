"""Spectrum, a data-free peer selector: pick the blocks whose weight matrices carry the most signal over noise.

Source: Hartford et al., "Spectrum: Targeted Training on Signal to Noise Ratio", arXiv 2406.06623 (§3.2-3.3 for the
threshold and the SNR, §4 for the noise estimate, §4.2 for the ranking). For a weight matrix W (n x m) with singular
values s_1 >= ... >= s_r:

    sigma = IQR(s) / 1.349                       the noise scale: the interquartile range of the singular values,
                                                 turned into a Gaussian standard deviation (robust to the outliers
                                                 that the signal puts at the top of the spectrum)
    eps   = sigma * (1 + sqrt(beta))             the Marchenko-Pastur upper edge without its 1/sqrt(n) factor (the
                                                 paper drops it), beta = min(n, m) / max(n, m)
    SNR   = sum(s_k > eps) / sum(s_k <= eps)     singular values above the edge are signal, the rest noise

beta: the paper's pseudocode writes n / m; W and W^T have the same singular values, so we take the aspect ratio <= 1
and the score does not depend on whether a layer stores its weight as (out, in) or (in, out).

The paper then divides the SNR by the largest singular value s_1 ("to enable comparisons between layers"). We do not,
by default (`normalize=True` gives the paper's exact score). The ratio above is scale-free; divided by s_1 it is
not (W -> cW divides it by c), and a strong low-rank signal then *lowers* the score: its singular value s enters
both sum(s_k > eps) and s_1, so the score tends to rank / sum(noise) as s grows, below that of pure noise
(measured: a 64 x 64 Gaussian of std 0.02 scores 2.6, the same plus a rank-4 signal 10x its spectral norm 0.9;
unnormalised 0.8 and 2.8).

Spectrum ranks matrices within each module type (all q_proj together, all down_proj together, ...) and trains the
top fraction (25% by default) of each type. Raw SNRs are not comparable across types (a 192 x 576 v_proj and a
576 x 576 q_proj have differently shaped noise spectra), so a block's score is the mean over its target types of its
rank within the type, as a fraction in (0, 1] (1 = the highest SNR of that type): the fraction of Spectrum's per-type
cut-offs under which the block's module would be trained. Ranks rather than SNR / type mean, so that one outlying
matrix cannot outweigh the block's other types.
"""

from __future__ import annotations

import torch


def matrix_snr(weight: torch.Tensor, normalize: bool = False) -> float:
    """Spectrum's signal-to-noise ratio of a 2-D weight matrix (float64 SVD); `normalize` divides it by the largest
    singular value, as the paper does (see the module docstring for why that is off by default)."""
    s = torch.linalg.svdvals(weight.detach().to(torch.float64))
    n, m = weight.shape
    sigma = (torch.quantile(s, 0.75) - torch.quantile(s, 0.25)) / 1.349
    eps = sigma * (1 + (min(n, m) / max(n, m)) ** 0.5)
    signal, noise = s[s > eps].sum().item(), s[s <= eps].sum().item()
    if noise == 0:  # every singular value above the edge (a flat spectrum has IQR 0), or a zero matrix
        return float("inf") if signal > 0 else 0.0
    snr = signal / noise
    return snr / s[0].item() if normalize else snr


def _modules(block, target: str) -> list[torch.nn.Module]:
    """The block's modules named `target` or ending in `.target`, as PEFT matches target_modules."""
    found = [module for name, module in block.named_modules() if name == target or name.endswith("." + target)]
    if not found:
        raise ValueError(f"no module named {target!r} in a block")
    return found


def module_snrs(model, target_modules: list[str], normalize: bool = False) -> dict[str, list[float]]:
    """For each target type, the SNR of every block's module of that type (mean, if a block has several)."""
    layers = model.model.layers
    return {target: [sum(matrix_snr(m.weight, normalize) for m in mods) / len(mods)
                     for mods in (_modules(block, target) for block in layers)]
            for target in target_modules}


def block_snr(model, target_modules: list[str], normalize: bool = False) -> dict[int, float]:
    """One score per block: its rank within each target type as a fraction in (0, 1], averaged over the types."""
    snrs = module_snrs(model, target_modules, normalize)
    count = len(model.model.layers)
    scores = [0.0] * count
    for values in snrs.values():
        for rank, block in enumerate(sorted(range(count), key=values.__getitem__), start=1):
            scores[block] += rank / count / len(snrs)
    return dict(enumerate(scores))


def spectrum_blocks(model, target_modules: list[str], k: int, normalize: bool = False) -> list[int]:
    """The k blocks with the highest `block_snr`, sorted ascending; ties go to the lower index."""
    scores = block_snr(model, target_modules, normalize)
    if not 1 <= k <= len(scores):
        raise ValueError(f"k={k} must be between 1 and the number of blocks ({len(scores)})")
    return sorted(sorted(scores, key=lambda block: (-scores[block], block))[:k])
