"""The shipped recipes' names, torch-free, so that ``mcdropout train --help`` lists them without importing torch.

``tests/test_cli_startup.py`` checks that these are the keys of ``_recipes.RECIPES``.
"""

RECIPE_NAMES: tuple[str, ...] = ("diabetes", "heteroscedastic-1d", "digits", "breast-cancer", "sequence", "reviews")
