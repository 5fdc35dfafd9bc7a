"""Debate experiments: the protocols of `oversight.protocols` played on the tasks' debate worlds.

`oversight.experiments.debate.digits` is the sparse-pixel image debate of Irving et al. 2018 on 8x8 digits
(`oversight.tasks.digits`); `oversight.experiments.debate.text` the hidden-passage text debate with verified quotes
(`oversight.tasks.passages`). Each trains its own judge and debaters; both debaters' RL uses the core's
`oversight.training.policy_gradient`.
"""
