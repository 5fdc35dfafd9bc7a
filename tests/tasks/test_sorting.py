from oversight.tasks import Problem, get_task


def _problem(words):
    return Problem(
        "sorting", "p", 1, "sort: " + " ".join(words) + "\n", " ".join(sorted(words)), {"items": words}
    )


def test_solution_is_the_words_in_alphabetical_order():
    task = get_task("sorting")
    for p in task.sample(50, 4, seed=0):
        assert p.solution.split() == sorted(p.data["items"])
        assert len(set(p.data["items"])) == len(p.data["items"]) == 6


def test_harder_levels_have_more_items_sharing_prefixes():
    task = get_task("sorting")
    easy, hard = task.sample(100, 1, seed=0), task.sample(100, 6, seed=0)
    assert {len(p.data["items"]) for p in easy} == {3}
    assert {len(p.data["items"]) for p in hard} == {8}

    def shared(ps):
        return sum(
            any(a != b and a[:2] == b[:2] for a in p.data["items"] for b in p.data["items"]) for p in ps
        )

    assert shared(hard) > 2 * shared(easy)


def test_misplaced_item_flaw_moves_one_word_and_keeps_the_same_words():
    task = get_task("sorting")
    for i, p in enumerate(task.sample(200, 5, seed=1)):
        flawed, record = task.inject_flaw(p, seed=i)
        assert sorted(flawed.split()) == sorted(p.data["items"])
        assert flawed.split() != p.solution.split()
        assert record.correction == sorted(p.data["items"])[record.location]


def test_gold_and_critiques_on_a_hand_made_list():
    task = get_task("sorting")
    p = _problem(["pear", "fig", "apple", "kiwi"])
    assert task.check(p, "apple fig kiwi pear").correct
    flawed = "apple kiwi fig pear"
    assert task.check(p, flawed).first_error == 1
    assert task.check_critique(p, flawed, "position 1: fig").valid
    assert task.check_critique(p, flawed, "position 2: kiwi").valid  # also a real flaw, rightly corrected
    assert not task.check_critique(p, flawed, "position 0: apple").valid
    assert not task.check_critique(p, flawed, "position 1: pear").valid
    assert task.check(p, "apple fig kiwi").first_error == 3
