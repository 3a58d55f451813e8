"""Recipes that build models: the paper's runs, the default model's recipe, the data-folder layout."""
