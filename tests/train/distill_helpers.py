"""What the distillation tests share: question/answer pairs (tests/train/conftest.py writes them as a Dolly file) and the tiny config over it."""
from studyhall.config import load_config

ANSWERS = [
    ("Name a primary color.", "Red is a primary color."),
    ("What do bees make?", "Bees make honey from the nectar of flowers."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Where do fish live?", "Fish live in water, in rivers, lakes and the sea."),
    ("What season comes after winter?", "Spring comes after winter."),
    ("What do plants need to grow?", "Plants need light, water and air to grow."),
    ("What is two plus two?", "Two plus two is four."),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day."),
    ("What do cows drink?", "Cows drink water."),
]


def _cfg(data, *overrides):
    return load_config("tiny", [f"data={data}", "val_size=2", "max_new_tokens=16", *overrides])
