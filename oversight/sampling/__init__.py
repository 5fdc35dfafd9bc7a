"""Batched generation with the KV cache."""

from oversight.sampling.generate import SampleOutput, Sampler, SamplingConfig, generate, left_pad

__all__ = ["SampleOutput", "Sampler", "SamplingConfig", "generate", "left_pad"]
