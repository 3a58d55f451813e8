"""Recipes that build models: the paper's runs, the shipped model's recipe (distill/), the data-folder layout."""
