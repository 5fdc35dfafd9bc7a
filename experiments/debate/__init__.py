"""Debate experiments: a protocol engine shared by image and text debate, and the games built on it.

`experiments.debate.protocol` holds the engine (information asymmetry, the verified-evidence channel, turn
and length budgets, blind / consultancy / debate / oracle protocols, both answer orders) and the metrics
(accuracy with Wilson intervals, log score, ECE, honest win rate, Elo from cross-play, evidence stats).
`experiments.debate.digits` is the sparse-pixel image debate of Irving et al. 2018 on 8x8 digits.
"""
