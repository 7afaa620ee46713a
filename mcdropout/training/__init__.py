"""Training bundles: the shipped recipes, the user's own tables, the UCI protocol and evaluation.

Needs the ``train`` extra (scikit-learn, matplotlib) for the recipes' data and the plots.
"""
