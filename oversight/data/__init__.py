"""Tokenizers and batching shared by every stage."""
