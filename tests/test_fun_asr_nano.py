"""FunASR nano: its feature extractor with the Kaldi filter banks computed without
torchaudio."""

import math

import numpy as np
import torch

from exportcheck.families.fun_asr_nano import fun_asr_nano_extractor, kaldi_fbank


def _kaldi_reference(wave, bins=80, rate=16000):
    """Kaldi's fbank as its documentation states it, written directly in torch."""
    frame, shift, fft = 400, 160, 512
    x = torch.from_numpy(wave).double()
    frames = x.unfold(0, frame, shift)  # snip_edges: only whole frames
    frames = frames - frames.mean(-1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=-1)
    frames = frames - 0.97 * previous
    n = torch.arange(frame, dtype=torch.float64)
    frames = frames * (0.54 - 0.46 * torch.cos(2 * math.pi * n / (frame - 1)))
    power = torch.fft.rfft(frames, n=fft).abs() ** 2  # (frames, 257)

    def mel(f):
        return 1127.0 * torch.log(1 + torch.as_tensor(f, dtype=torch.float64) / 700.0)

    low, high = mel(20.0), mel(rate / 2)
    edges = low + (high - low) * torch.arange(bins + 2, dtype=torch.float64) / (bins + 1)
    freqs = mel(torch.arange(fft // 2 + 1, dtype=torch.float64) * rate / fft)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - left) / (centre - left)
    down = (right - freqs[None]) / (right - centre)
    weights = torch.clamp(torch.minimum(up, down), min=0)  # (bins, 257)
    energies = power @ weights.T
    return torch.clamp(energies, min=float(np.finfo(np.float32).eps)).log().float()


def test_the_filter_banks_are_kaldis():
    wave = np.random.default_rng(0).standard_normal(16000 + 77).astype("float32") * 0.1
    got = kaldi_fbank(wave, 80, 16000, 25, 10)
    expected = _kaldi_reference(wave)
    assert got.shape == expected.shape == (1 + (16000 + 77 - 400) // 160, 80)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_the_extractor_stacks_low_frame_rate_windows_and_pads_with_a_mask():
    extractor = fun_asr_nano_extractor(None)
    rng = np.random.default_rng(1)
    waves = [rng.standard_normal(n).astype("float32") * 0.1 for n in (16000, 8000)]
    out = extractor(waves, sampling_rate=16000, return_tensors="pt")
    frames = [1 + (n - 400) // 160 for n in (16000, 8000)]  # 98 and 48 filter-bank frames
    lfr = [(f + 5) // 6 for f in frames]  # windows of 7 every 6 frames
    assert out["input_features"].shape == (2, lfr[0], 80 * 7)
    assert out["input_features_mask"].sum(-1).tolist() == lfr
    # each window's 7 frames side by side; the first is centred on frame 0
    bank = kaldi_fbank(waves[0], 80, 16000, 25, 10)
    window = out["input_features"][0, 1].view(7, 80)
    torch.testing.assert_close(window, bank[3:10])
