"""The demo's protocols: which student arms, learning rates, seeds and lengths a named run
uses (`svdlora demo --protocol NAME`); any setting can still be given on its own."""

from __future__ import annotations

from typing import Any

# The student grids. small: about 13 minutes on 2 CPU cores with SmolLM2-135M (12 short
# runs: the question's two arms plus PiSSA, the strongest teacher-free SVD init, each at
# two learning rates a factor 5 apart, over two seeds). medium: what the teacher buys, with
# students as long as the teacher (one epoch each): svd from the final teacher and from
# its checkpoint after one step (svd@1) against random, PiSSA and the gradient inits
# LoRA-GA and LoRA-One, 3 learning rates spanning 25x, 3 seeds. full: every init, svd
# from the teacher after 1 and 5 steps too, 5 learning rates spanning 30x, 3 seeds.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "small": {
        "inits": ("random", "svd", "pissa"),
        "learning_rates": (2e-4, 1e-3),
        "seeds": (0, 1),
        "student_max_steps": 12,
    },
    "medium": {
        "inits": ("random", "svd", "pissa", "lora-ga", "lora-one"),
        "save_steps": (1,),
        "learning_rates": (1e-4, 5e-4, 2.5e-3),
        "seeds": (0, 1, 2),
        "student_max_steps": None,
        "teacher_epochs": 1,
        "student_epochs": 1,
        "eval_every": 7,
        "eval_limit": 8,
    },
    "full": {
        "inits": (
            "random",
            "svd",
            "subspace",
            "pissa",
            "olora",
            "lora-ga",
            "lora-one",
            "eva",
        ),
        "save_steps": (1, 5),
        "learning_rates": (1e-4, 2e-4, 5e-4, 1e-3, 3e-3),
        "seeds": (0, 1, 2),
        "student_max_steps": None,
    },
}
