"""Tasks with ground truth: problems at a chosen difficulty, gold checkers, flaw injectors, critique checkers.

    from oversight.tasks import get_task
    task = get_task("arithmetic")
    problem = task.sample(1, difficulty=3, seed=0)[0]
    flawed, record = task.inject_flaw(problem, seed=0)
    assert task.check(problem, flawed).first_error == record.location
    assert task.check_critique(problem, flawed, record.critique()).valid

Built-in tasks: "arithmetic", "addition", "sorting", "sat", "code" (see docs/tasks.md). Other packages add
their own with `@register_task("name")` on a `Task` subclass.
"""

from oversight.tasks import addition, arithmetic, code, sat, sorting  # noqa: F401  (registers the built-ins)
from oversight.tasks.base import (
    COLUMNS,
    Analysis,
    Critique,
    CritiqueVerdict,
    FlawRecord,
    LabelledResponse,
    MalformedRowError,
    Problem,
    Task,
    Verdict,
    available_tasks,
    from_dataset,
    get_task,
    load_dataset,
    load_problems,
    problem_from_record,
    problem_to_record,
    register_task,
    save_problems,
    to_dataset,
)

__all__ = [
    "COLUMNS",
    "Analysis",
    "Critique",
    "CritiqueVerdict",
    "FlawRecord",
    "LabelledResponse",
    "MalformedRowError",
    "Problem",
    "Task",
    "Verdict",
    "available_tasks",
    "from_dataset",
    "get_task",
    "load_dataset",
    "load_problems",
    "problem_from_record",
    "problem_to_record",
    "register_task",
    "save_problems",
    "to_dataset",
]
